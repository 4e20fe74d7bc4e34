//! What the classifier still knows when sqlparser cannot parse a statement.
//!
//! The route is the primary (rule of doubt), except for statements whose meaning the leading
//! keywords settle: transaction control must never be missed (`BEGIN … DEFERRABLE`, `COMMIT
//! PREPARED`), cursor commands follow their transaction, `TABLE t` is a read. Session effects
//! are read from keywords too, conservatively: anything that may leave state on the
//! connection and cannot be described pins the session.

use super::functions::{Decision, FunctionName, Functions};
use super::lexer::{Kind, Lexer, Token};
use super::settings::{quote_literal, set_transaction};
use super::{begin, classify_one, Classification, Effect, Pin, Reason};

/// The significant tokens of one statement.
struct Words<'a> {
    text: &'a str,
    tokens: Vec<Token>,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        Words {
            text,
            tokens: Lexer::new(text).filter(|t| !t.is_trivia()).collect(),
        }
    }

    /// Whether token `i` is the keyword `kw` (any case).
    fn is(&self, i: usize, kw: &str) -> bool {
        self.tokens.get(i).is_some_and(|t| t.is_word(self.text, kw))
    }

    /// Whether keyword `a` is directly followed by keyword `b` anywhere from `from` on.
    fn has_pair(&self, from: usize, a: &str, b: &str) -> bool {
        (from..self.tokens.len()).any(|i| self.is(i, a) && self.is(i + 1, b))
    }

    /// An identifier token as PostgreSQL resolves it.
    fn ident(&self, i: usize) -> Option<String> {
        let token = self.tokens.get(i)?;
        let text = token.text(self.text);
        match token.kind {
            Kind::Word => Some(text.to_lowercase()),
            Kind::QuotedIdent => text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .map(|t| t.replace("\"\"", "\"")),
            _ => None,
        }
    }

    /// The text from token `i` to the end.
    fn rest(&self, i: usize) -> &'a str {
        self.tokens
            .get(i)
            .and_then(|t| self.text.get(t.start..))
            .unwrap_or("")
    }
}

/// `READ ONLY|WRITE` and `ISOLATION LEVEL SERIALIZABLE` among the keywords from `from`.
fn transaction_modes(words: &Words, from: usize) -> (Option<bool>, bool) {
    let mut read_only = None;
    for i in from..words.tokens.len() {
        if words.is(i, "read") {
            if words.is(i + 1, "only") {
                read_only = Some(true);
            } else if words.is(i + 1, "write") {
                read_only = Some(false);
            }
        }
    }
    (read_only, words.has_pair(from, "level", "serializable"))
}

fn pin(out: &mut Classification, pin: Pin) {
    out.need_primary(Reason::SessionState);
    out.effects.push(Effect::Pin(pin));
}

/// Classifies a statement sqlparser rejected.
pub(crate) fn classify(text: &str, functions: &Functions, depth: u8, out: &mut Classification) {
    let words = Words::new(text);
    let first = words
        .tokens
        .first()
        .filter(|t| t.kind == Kind::Word)
        .map(|t| t.text(text).to_ascii_lowercase())
        .unwrap_or_default();
    match first.as_str() {
        "begin" | "start" => {
            let (read_only, serializable) = transaction_modes(&words, 1);
            begin(out, read_only, serializable);
        }
        "commit" | "end" | "abort" | "rollback" => {
            if words.is(1, "prepared") {
                // Finishes a prepared transaction; the session's own is untouched.
                out.need_primary(Reason::TransactionMode);
            } else if (1..=3).any(|i| words.is(i, "to")) {
                // ROLLBACK TO SAVEPOINT: the transaction goes on.
            } else if words.has_pair(1, "and", "chain") {
                // The chained transaction keeps node and characteristics.
            } else {
                out.effects.push(Effect::EndTransaction);
            }
        }
        "prepare" if words.is(1, "transaction") => {
            // Ends the session's transaction; the prepared one lives on the primary.
            out.need_primary(Reason::TransactionMode);
            out.effects.push(Effect::EndTransaction);
        }
        "prepare" => prepare(&words, functions, depth, out),
        "execute" => {
            // Parameters could not be read: rule of doubt.
            out.need_primary(Reason::Unclassified);
            if let Some(name) = words.ident(1) {
                out.effects.push(Effect::Execute { name });
            }
        }
        "deallocate" => {
            let at = if words.is(1, "prepare") { 2 } else { 1 };
            let all = words.is(at, "all");
            match words.ident(at) {
                Some(name) => out.effects.push(Effect::Deallocate {
                    name: (!all).then_some(name),
                }),
                None => out.need_primary(Reason::Unclassified),
            }
        }
        "set" => set(&words, out),
        "reset" => {
            if words.is(1, "time") && words.is(2, "zone") {
                out.effects.push(Effect::Reset {
                    name: "timezone".to_string(),
                });
            } else {
                pin(out, Pin::Unknown);
            }
        }
        // `TABLE t [ORDER BY …]` is `SELECT * FROM t …`, which sqlparser does parse.
        "table" if words.tokens.len() > 1 => {
            let rewritten = format!("SELECT * FROM {}", words.rest(1));
            classify_one(&rewritten, functions, depth + 1, out);
        }
        // Cursors live in their transaction; they go wherever it is.
        "fetch" | "move" => {}
        "close" => {
            if words.is(1, "all") {
                out.effects.push(Effect::Unpin(Pin::HoldCursor));
            }
        }
        "discard" => {
            if words.is(1, "all") {
                out.effects.push(Effect::DiscardAll);
            } else if words.is(1, "temp") || words.is(1, "temporary") {
                out.effects.push(Effect::Unpin(Pin::TempObjects));
            } else if words.is(1, "sequences") {
                out.effects.push(Effect::Unpin(Pin::Sequence));
            }
        }
        "listen" => pin(out, Pin::Listen),
        "unlisten" => {
            out.need_primary(Reason::SessionState);
            if words.tokens.get(1).is_some_and(|t| t.text(text) == "*") {
                out.effects.push(Effect::Unpin(Pin::Listen));
            }
        }
        "do" => {
            out.need_primary(Reason::Unclassified);
            // The body is a constant that the cache key drops, and the pins depend on it.
            out.cacheable = false;
            do_block(text, out);
        }
        "declare" => {
            out.need_primary(Reason::Unclassified);
            if words.has_pair(1, "with", "hold") {
                out.effects.push(Effect::Pin(Pin::HoldCursor));
            }
            calls(&words, functions, out);
        }
        "create" | "alter" | "drop" => {
            out.need_primary(Reason::Write);
            ddl(&words, first == "create", out);
        }
        // Statements sqlparser rejects but whose first words say what they do.
        "insert" | "update" | "delete" | "merge" | "truncate" => {
            out.need_primary(Reason::Write);
            calls(&words, functions, out);
        }
        _ => {
            let locks = (first == "select" || first == "with")
                && ["update", "share", "no", "key"]
                    .iter()
                    .any(|lock| words.has_pair(1, "for", lock));
            out.need_primary(if locks {
                Reason::LockingRead
            } else {
                Reason::Unclassified
            });
            if (first == "select" || first == "with")
                && (words.has_pair(1, "into", "temp") || words.has_pair(1, "into", "temporary"))
            {
                out.effects.push(Effect::Pin(Pin::TempObjects));
            }
            calls(&words, functions, out);
        }
    }
}

/// `PREPARE name [(types)] AS statement`: the inner statement's route, through the same
/// classifier (it may parse where the whole did not, or fall back in turn).
fn prepare(words: &Words, functions: &Functions, depth: u8, out: &mut Classification) {
    let Some(name) = words.ident(1) else {
        return out.need_primary(Reason::Unclassified);
    };
    let mut paren_depth = 0usize;
    let mut body = None;
    for (i, token) in words.tokens.iter().enumerate().skip(2) {
        match token.kind {
            Kind::LParen => paren_depth += 1,
            Kind::RParen => paren_depth = paren_depth.saturating_sub(1),
            _ if paren_depth == 0 && words.is(i, "as") => {
                body = Some(i + 1);
                break;
            }
            _ => {}
        }
    }
    let mut prepared = Classification::new();
    match body {
        Some(i) if i < words.tokens.len() => {
            classify_one(words.rest(i), functions, depth + 1, &mut prepared)
        }
        _ => prepared.need_primary(Reason::Unclassified),
    }
    super::prepare(out, name, prepared);
}

/// SET forms sqlparser rejects.
fn set(words: &Words, out: &mut Classification) {
    let mut i = 1;
    if words.is(i, "local") {
        // Lasts until the transaction ends: nothing to replay.
        return;
    }
    if words.is(i, "session") && !words.is(i + 1, "characteristics") {
        i += 1;
    }
    if words.is(i, "transaction") {
        if words.is(i + 1, "snapshot") {
            set_transaction(out, None, false);
            return out.need_primary(Reason::TransactionMode);
        }
        let (read_only, serializable) = transaction_modes(words, i + 1);
        return set_transaction(out, read_only, serializable);
    }
    if words.is(i, "session") && words.is(i + 1, "characteristics") {
        let (read_only, serializable) = transaction_modes(words, i + 2);
        if let Some(read_only) = read_only {
            out.effects.push(Effect::Set {
                name: "default_transaction_read_only".to_string(),
                value: if read_only { "on" } else { "off" }.to_string(),
            });
        }
        if words.has_pair(i + 2, "isolation", "level") {
            if !serializable {
                // Another level: replaying it exactly is not worth a second parser.
                return pin(out, Pin::Unknown);
            }
            out.effects.push(Effect::Set {
                name: "default_transaction_isolation".to_string(),
                value: quote_literal("serializable"),
            });
        }
        return;
    }
    if words.is(i, "constraints") {
        // Transaction-scoped.
        return;
    }
    if words.is(i, "schema") && words.tokens.len() == i + 2 {
        if let Some(token) = words.tokens.get(i + 1).filter(|t| t.kind == Kind::Str) {
            // A complete string token is valid SQL as it stands.
            out.effects.push(Effect::Set {
                name: "search_path".to_string(),
                value: token.text(words.text).to_string(),
            });
            return;
        }
    }
    if words.is(i, "xml") && words.is(i + 1, "option") && words.tokens.len() == i + 3 {
        for option in ["document", "content"] {
            if words.is(i + 2, option) {
                out.effects.push(Effect::Set {
                    name: "xmloption".to_string(),
                    value: option.to_string(),
                });
                return;
            }
        }
    }
    // `SET x FROM CURRENT` and anything else: a setting the session cannot replay.
    pin(out, Pin::Unknown);
}

/// Temporary objects and catalog changes in CREATE/ALTER/DROP.
fn ddl(words: &Words, create: bool, out: &mut Classification) {
    let head = 1..words.tokens.len().min(7);
    if create
        && head
            .clone()
            .take(4)
            .any(|i| words.is(i, "temp") || words.is(i, "temporary"))
    {
        out.effects.push(Effect::Pin(Pin::TempObjects));
    }
    let routines = [
        "function",
        "procedure",
        "routine",
        "aggregate",
        "extension",
        "schema",
        "owned",
    ];
    if head
        .into_iter()
        .any(|i| routines.iter().any(|kw| words.is(i, kw)))
    {
        out.effects.push(Effect::FunctionsChanged);
    }
}

/// Session effects of the function calls that can be found by their `name(` shape.
fn calls(words: &Words, functions: &Functions, out: &mut Classification) {
    for i in 0..words.tokens.len() {
        if words.tokens.get(i + 1).map(|t| t.kind) != Some(Kind::LParen) {
            continue;
        }
        let Some(name) = words.ident(i) else {
            continue;
        };
        let dotted = i >= 2 && words.tokens[i - 1].text(words.text) == ".";
        let schema = if dotted { words.ident(i - 2) } else { None };
        match functions.decide(&FunctionName { schema, name }) {
            Decision::Pin(p) => out.effects.push(Effect::Pin(p)),
            Decision::Unpin(p) => out.effects.push(Effect::Unpin(p)),
            Decision::SetConfig => out.effects.push(Effect::Pin(Pin::Unknown)),
            Decision::SequenceState => out.effects.push(Effect::ReadsSequence),
            // Any identifier before a parenthesis counts here (VALUES, IN, …): an unknown
            // one is no reason to read the catalog again.
            Decision::Route(_) | Decision::Unknown => {}
        }
    }
}

/// A `DO` block runs code nobody parses here; look for the session state it could leave
/// behind, in its body and in any dynamic SQL strings (a heuristic, erring towards pins).
fn do_block(text: &str, out: &mut Classification) {
    let lower = text.to_ascii_lowercase();
    let word_at = |at: usize, len: usize| {
        let before = lower[..at].bytes().next_back();
        let after = lower.as_bytes().get(at + len).copied();
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        !before.is_some_and(ident) && !after.is_some_and(ident)
    };
    let has_word = |w: &str| lower.match_indices(w).any(|(at, _)| word_at(at, w.len()));
    if lower.contains("pg_advisory_lock") || lower.contains("pg_try_advisory_lock") {
        out.effects.push(Effect::Pin(Pin::AdvisoryLock));
    }
    if has_word("temp") || has_word("temporary") {
        out.effects.push(Effect::Pin(Pin::TempObjects));
    }
    if has_word("nextval") || has_word("setval") {
        out.effects.push(Effect::Pin(Pin::Sequence));
    }
    if has_word("listen") {
        out.effects.push(Effect::Pin(Pin::Listen));
    }
    // A session SET: `set_config(…)`, or SET opening a statement (after `;`, BEGIN, THEN,
    // ELSE, LOOP or a quote) rather than UPDATE's SET.
    let statement_set = lower.match_indices("set").any(|(at, _)| {
        if !word_at(at, 3) {
            return false;
        }
        let before = lower[..at].trim_end();
        before.ends_with(';')
            || before.ends_with('\'')
            || before.ends_with('$')
            || ["begin", "then", "else", "loop"]
                .iter()
                .any(|kw| before.ends_with(kw))
    });
    if lower.contains("set_config") || statement_set {
        out.effects.push(Effect::Pin(Pin::Unknown));
    }
}
