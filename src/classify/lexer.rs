//! A small single-pass SQL lexer with PostgreSQL's token rules.
//!
//! sqlparser drops comments and costs microseconds per statement, so three jobs use this
//! lexer instead: the cache key ([`normalize`]: constants replaced, so `pgbench -M simple`
//! statements that differ only in their values share one key), hint comments, and cutting a
//! Query message into statements so that one unparseable statement cannot hide the
//! transaction boundaries around it. It never allocates and never fails: unterminated
//! quotes and comments run to the end of the text.
//!
//! Assumes `standard_conforming_strings = on` (PostgreSQL's default since 9.1): a backslash
//! in a plain `'…'` string is an ordinary character.

/// What a token is; `Str`, `DollarStr` and `Number` are the constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Spaces, tabs, newlines.
    Space,
    /// `-- …` up to the end of the line.
    LineComment,
    /// `/* … */`, nested as PostgreSQL nests them.
    BlockComment,
    /// `'…'`, `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`.
    Str,
    /// `$tag$ … $tag$`.
    DollarStr,
    /// `42`, `1.5e3`, `.5`, `0x1F`, `1_000`.
    Number,
    /// An unquoted identifier or keyword.
    Word,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// `$1`.
    Param,
    /// `;`.
    Semicolon,
    /// `(`.
    LParen,
    /// `)`.
    RParen,
    /// Any other single byte: operators, punctuation.
    Other,
}

/// One token: its kind and byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// The token's text.
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        src.get(self.start..self.end).unwrap_or("")
    }

    /// Whitespace and comments: what PostgreSQL skips between tokens.
    pub fn is_trivia(&self) -> bool {
        matches!(
            self.kind,
            Kind::Space | Kind::LineComment | Kind::BlockComment
        )
    }

    /// A word equal to `keyword`, ignoring ASCII case.
    pub fn is_word(&self, src: &str, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text(src).eq_ignore_ascii_case(keyword)
    }
}

/// Iterates over the tokens of a text.
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `src`.
    pub fn new(src: &'a str) -> Self {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    /// Skips a quoted run opened at `self.pos` (the opening quote), honouring the doubled
    /// quote and, when `backslash` is set, backslash escapes.
    fn quoted(&mut self, quote: u8, backslash: bool) {
        let mut i = self.pos + 1;
        while i < self.src.len() {
            let c = self.src[i];
            if backslash && c == b'\\' {
                i += 2;
            } else if c == quote {
                if self.at(i + 1) == quote {
                    i += 2;
                } else {
                    self.pos = i + 1;
                    return;
                }
            } else {
                i += 1;
            }
        }
        self.pos = self.src.len();
    }

    /// Skips a block comment opened at `self.pos`; comments nest.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        let mut i = self.pos;
        while i < self.src.len() {
            if self.src[i] == b'/' && self.at(i + 1) == b'*' {
                depth += 1;
                i += 2;
            } else if self.src[i] == b'*' && self.at(i + 1) == b'/' {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    self.pos = i;
                    return;
                }
            } else {
                i += 1;
            }
        }
        self.pos = self.src.len();
    }

    /// At a `$`: a dollar-quoted string, a `$1` parameter, or a lone `$`.
    fn dollar(&mut self) -> Kind {
        let start = self.pos;
        if self.at(start + 1).is_ascii_digit() {
            let mut i = start + 1;
            while self.at(i).is_ascii_digit() {
                i += 1;
            }
            self.pos = i;
            return Kind::Param;
        }
        // The opening delimiter: `$$` or `$tag$`, where a tag is an identifier without `$`.
        let mut i = start + 1;
        if is_ident_start(self.at(i)) {
            while i < self.src.len() && is_ident_char(self.src[i]) && self.src[i] != b'$' {
                i += 1;
            }
        }
        if self.at(i) != b'$' {
            self.pos = start + 1;
            return Kind::Other;
        }
        let delimiter = &self.src[start..=i];
        let body = i + 1;
        self.pos = find(&self.src[body..], delimiter)
            .map(|at| body + at + delimiter.len())
            .unwrap_or(self.src.len());
        Kind::DollarStr
    }

    fn number(&mut self) {
        let mut i = self.pos;
        if self.at(i) == b'0' && matches!(self.at(i + 1) | 0x20, b'x' | b'o' | b'b') {
            i += 2;
            while self.at(i).is_ascii_alphanumeric() || self.at(i) == b'_' {
                i += 1;
            }
            self.pos = i;
            return;
        }
        while self.at(i).is_ascii_digit() || self.at(i) == b'_' {
            i += 1;
        }
        // A `.` belongs to the number unless it starts `..` (array slice bounds).
        if self.at(i) == b'.' && self.at(i + 1) != b'.' {
            i += 1;
            while self.at(i).is_ascii_digit() || self.at(i) == b'_' {
                i += 1;
            }
        }
        if matches!(self.at(i), b'e' | b'E') {
            let digits = if matches!(self.at(i + 1), b'+' | b'-') {
                i + 2
            } else {
                i + 1
            };
            if self.at(digits).is_ascii_digit() {
                i = digits;
                while self.at(i).is_ascii_digit() {
                    i += 1;
                }
            }
        }
        self.pos = i;
    }

    /// At an identifier start: a word, or one of the prefixed string forms.
    fn word(&mut self) -> Kind {
        let c = self.src[self.pos] | 0x20;
        let next = self.at(self.pos + 1);
        if next == b'\'' {
            match c {
                b'e' => {
                    self.pos += 1;
                    self.quoted(b'\'', true);
                    return Kind::Str;
                }
                b'b' | b'x' | b'n' => {
                    self.pos += 1;
                    self.quoted(b'\'', false);
                    return Kind::Str;
                }
                _ => {}
            }
        }
        if c == b'u' && next == b'&' {
            match self.at(self.pos + 2) {
                b'\'' => {
                    self.pos += 2;
                    self.quoted(b'\'', false);
                    return Kind::Str;
                }
                b'"' => {
                    self.pos += 2;
                    self.quoted(b'"', false);
                    return Kind::QuotedIdent;
                }
                _ => {}
            }
        }
        let mut i = self.pos + 1;
        while i < self.src.len() && is_ident_char(self.src[i]) {
            i += 1;
        }
        self.pos = i;
        Kind::Word
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    // Inlined into its few callers: the per-token call overhead was a third of normalize.
    #[inline(always)]
    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let c = *self.src.get(start)?;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => {
                let mut i = start;
                while matches!(self.at(i), b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') {
                    i += 1;
                }
                self.pos = i;
                Kind::Space
            }
            b'-' if self.at(start + 1) == b'-' => {
                let mut i = start;
                while i < self.src.len() && self.src[i] != b'\n' {
                    i += 1;
                }
                self.pos = i;
                Kind::LineComment
            }
            b'/' if self.at(start + 1) == b'*' => {
                self.block_comment();
                Kind::BlockComment
            }
            b'\'' => {
                self.quoted(b'\'', false);
                Kind::Str
            }
            b'"' => {
                self.quoted(b'"', false);
                Kind::QuotedIdent
            }
            b'$' => self.dollar(),
            b'0'..=b'9' => {
                self.number();
                Kind::Number
            }
            // `.5` is a number; the second dot of `1..2` (PL/pgSQL ranges) is not.
            b'.' if self.at(start + 1).is_ascii_digit()
                && (start == 0 || self.src[start - 1] != b'.') =>
            {
                self.number();
                Kind::Number
            }
            b';' => {
                self.pos += 1;
                Kind::Semicolon
            }
            b'(' => {
                self.pos += 1;
                Kind::LParen
            }
            b')' => {
                self.pos += 1;
                Kind::RParen
            }
            c if is_ident_start(c) => self.word(),
            _ => {
                self.pos += 1;
                Kind::Other
            }
        };
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

/// First byte of an unquoted identifier: a letter, `_`, or any byte of a non-ASCII character.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// Later bytes of an unquoted identifier.
fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a comment is an operator's routing hint: `pgsplit:primary` in any case, in a
/// block or line comment, alone or inside a longer comment, or pgpool's exact
/// `/*NO LOAD BALANCE*/`.
pub(crate) fn is_hint(comment: &str) -> bool {
    const PGSPLIT: &[u8] = b"pgsplit:primary";
    comment == "/*NO LOAD BALANCE*/"
        || comment
            .as_bytes()
            .windows(PGSPLIT.len())
            .any(|w| w.eq_ignore_ascii_case(PGSPLIT))
}

/// The cache key text of a statement: constants (numbers, all string forms, dollar quotes)
/// become `?`, unquoted words are lower-cased (PostgreSQL folds them anyway), whitespace
/// runs become one space, and comments are dropped unless they carry a routing hint, so
/// per-request tracing comments do not defeat the cache. Quoted identifiers, `$n`
/// parameters and operators are kept as written.
pub fn normalize(sql: &str) -> String {
    // Bytes, not chars: tokens start and end at ASCII delimiters, so copying whole tokens and
    // lower-casing ASCII letters keeps the text valid UTF-8.
    let src = sql.as_bytes();
    let mut out = Vec::with_capacity(src.len());
    let mut pending_space = false;
    for token in Lexer::new(sql) {
        let bytes = src.get(token.start..token.end).unwrap_or_default();
        match token.kind {
            Kind::Space => {
                pending_space = true;
                continue;
            }
            Kind::LineComment | Kind::BlockComment if !is_hint(token.text(sql)) => {
                pending_space = true;
                continue;
            }
            _ => {}
        }
        if pending_space && !out.is_empty() {
            out.push(b' ');
        }
        pending_space = false;
        match token.kind {
            Kind::Str | Kind::DollarStr | Kind::Number => out.push(b'?'),
            Kind::Word => out.extend(bytes.iter().map(u8::to_ascii_lowercase)),
            _ => out.extend_from_slice(bytes),
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The byte range of the statement name in `EXECUTE name …`, when that is what `sql` is
/// (comments and whitespace around allowed): where pgsplit writes the name the statement
/// has on the servers.
pub fn executed_name(sql: &str) -> Option<std::ops::Range<usize>> {
    let mut tokens = Lexer::new(sql).filter(|t| !t.is_trivia());
    let keyword = tokens.next()?;
    if keyword.kind != Kind::Word || !keyword.text(sql).eq_ignore_ascii_case("execute") {
        return None;
    }
    let name = tokens.next()?;
    matches!(name.kind, Kind::Word | Kind::QuotedIdent).then_some(name.start..name.end)
}

/// What one pass over a Query message's text finds.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// A routing hint comment appears somewhere.
    pub hint: bool,
    /// Byte ranges of the statements, without the `;` that ends them; statements with
    /// nothing but whitespace and comments are left out.
    pub statements: Vec<(usize, usize)>,
}

/// Cuts `sql` into statements the way psql does: at `;` outside parentheses, and, in
/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, not inside a `BEGIN ATOMIC … END` body.
pub(crate) fn scan(sql: &str) -> Scan {
    let mut scan = Scan::default();
    let mut start = 0;
    let mut meaningful = false;
    let mut paren_depth = 0usize;
    let mut begin_depth = 0usize;
    // psql's heuristic: the first letters of the leading CREATE/OR/REPLACE/FUNCTION/PROCEDURE
    // words tell whether this statement defines a routine.
    let mut leading = [0u8; 4];
    let mut words = 0usize;
    for token in Lexer::new(sql) {
        match token.kind {
            Kind::Space => {}
            Kind::LineComment | Kind::BlockComment => scan.hint |= is_hint(token.text(sql)),
            Kind::Semicolon if paren_depth == 0 && begin_depth == 0 => {
                if meaningful {
                    scan.statements.push((start, token.start));
                }
                start = token.end;
                meaningful = false;
                words = 0;
                leading = [0; 4];
            }
            kind => {
                meaningful = true;
                match kind {
                    Kind::LParen => paren_depth += 1,
                    Kind::RParen => paren_depth = paren_depth.saturating_sub(1),
                    Kind::Word => {
                        let text = token.text(sql);
                        if words < leading.len()
                            && ["create", "or", "replace", "function", "procedure"]
                                .iter()
                                .any(|w| text.eq_ignore_ascii_case(w))
                        {
                            leading[words] = text.as_bytes()[0] | 0x20;
                        }
                        words += 1;
                        let routine = leading[0] == b'c'
                            && (matches!(leading[1], b'f' | b'p')
                                || (leading[1] == b'o'
                                    && leading[2] == b'r'
                                    && matches!(leading[3], b'f' | b'p')));
                        if routine && paren_depth == 0 {
                            if text.eq_ignore_ascii_case("begin") {
                                begin_depth += 1;
                            } else if text.eq_ignore_ascii_case("case") {
                                if begin_depth >= 1 {
                                    begin_depth += 1;
                                }
                            } else if text.eq_ignore_ascii_case("end") {
                                begin_depth = begin_depth.saturating_sub(1);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if meaningful {
        scan.statements.push((start, sql.len()));
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        Lexer::new(sql)
            .filter(|t| t.kind != Kind::Space)
            .map(|t| (t.kind, t.text(sql)))
            .collect()
    }

    #[test]
    fn the_name_an_execute_runs_is_found_as_written() {
        let cases = [
            ("EXECUTE s1", Some("s1")),
            ("  execute S1(1, 'a')", Some("S1")),
            (
                "/* pgsplit:primary */ EXECUTE \"My Stmt\" (2)",
                Some("\"My Stmt\""),
            ),
            ("-- why\nExecute\n  p", Some("p")),
            ("EXECUTE", None),
            ("EXECUTE 'x'", None),
            ("SELECT 1", None),
            ("EXPLAIN EXECUTE s1", None),
            ("executed s1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(executed_name(sql).map(|r| &sql[r]), want, "{sql}");
        }
    }

    #[test]
    fn normalize_replaces_constants() {
        let cases = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                "select abalance from pgbench_accounts where aid = ?;",
            ),
            ("select 1.5e-3, .5, 0x1F, 1_000", "select ?, ?, ?, ?"),
            ("SELECT 'it''s', E'a\\'b', 'x'", "select ?, ?, ?"),
            (
                "SELECT B'0101', X'ff', N'n', U&'d\\0061t'",
                "select ?, ?, ?, ?",
            ),
            ("SELECT $$a 'b' $c$$, $fn$ x $$ y $fn$", "select ?, ?"),
            ("SELECT $q$ unterminated", "select ?"),
            ("SELECT 'unterminated", "select ?"),
            ("SELECT a[1:2], a[1..2]", "select a[?:?], a[?..?]"),
            ("SELECT -1, +2.0", "select -?, +?"),
        ];
        for (sql, want) in cases {
            assert_eq!(normalize(sql), want, "normalize({sql:?})");
        }
    }

    #[test]
    fn normalize_keeps_identifiers_params_and_hints() {
        let cases = [
            ("SELECT t1.c2 FROM t1", "select t1.c2 from t1"),
            (
                "SELECT \"Mixed Case\", \"a\"\"b\" FROM x",
                "select \"Mixed Case\", \"a\"\"b\" from x",
            ),
            (
                "SELECT $1, $12 FROM t WHERE a = $2",
                "select $1, $12 from t where a = $2",
            ),
            ("SELECT a$b, _x9 FROM t", "select a$b, _x9 from t"),
            (
                "/* pgsplit:primary */ SELECT 1",
                "/* pgsplit:primary */ select ?",
            ),
            (
                "SELECT /*NO LOAD BALANCE*/ 1",
                "select /*NO LOAD BALANCE*/ ?",
            ),
            ("SELECT 1 -- trailing", "select ?"),
            ("SELECT 1 -- pgsplit:primary", "select ? -- pgsplit:primary"),
            (
                "-- pgsplit:primary\nSELECT 1",
                "-- pgsplit:primary select ?",
            ),
            ("/* trace=abc */ SELECT 1", "select ?"),
            (
                "SELECT U&\"d\\0061t\" FROM t",
                "select U&\"d\\0061t\" from t",
            ),
            ("SELECT éte FROM t", "select éte from t"),
        ];
        for (sql, want) in cases {
            assert_eq!(normalize(sql), want, "normalize({sql:?})");
        }
    }

    #[test]
    fn normalize_collapses_whitespace() {
        assert_eq!(
            normalize("  SELECT\n\t a ,\r\n b   FROM  t  "),
            "select a , b from t"
        );
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" -- only a comment"), "");
    }

    #[test]
    fn nested_comments_are_one_token() {
        let sql = "SELECT /* a /* b */ still comment */ 1";
        assert_eq!(
            kinds(sql),
            vec![
                (Kind::Word, "SELECT"),
                (Kind::BlockComment, "/* a /* b */ still comment */"),
                (Kind::Number, "1"),
            ]
        );
        assert_eq!(normalize(sql), "select ?");
    }

    #[test]
    fn escape_strings_honour_backslashes() {
        // The quote after the backslash does not end the string.
        let sql = r"SELECT E'a\'; DROP TABLE t; --' AS x";
        assert_eq!(
            kinds(sql),
            vec![
                (Kind::Word, "SELECT"),
                (Kind::Str, r"E'a\'; DROP TABLE t; --'"),
                (Kind::Word, "AS"),
                (Kind::Word, "x"),
            ]
        );
        // A plain string treats the backslash as a character.
        assert_eq!(normalize(r"SELECT 'a\', 1"), "select ?, ?");
    }

    #[test]
    fn dollar_quotes_need_their_own_tag() {
        let sql = "SELECT $a$ x $b$ ; $a$, $1";
        assert_eq!(
            kinds(sql),
            vec![
                (Kind::Word, "SELECT"),
                (Kind::DollarStr, "$a$ x $b$ ; $a$"),
                (Kind::Other, ","),
                (Kind::Param, "$1"),
            ]
        );
    }

    #[test]
    fn operators_do_not_hide_comments() {
        assert_eq!(
            kinds("SELECT 1+--c\n2"),
            vec![
                (Kind::Word, "SELECT"),
                (Kind::Number, "1"),
                (Kind::Other, "+"),
                (Kind::LineComment, "--c"),
                (Kind::Number, "2"),
            ]
        );
    }

    #[test]
    fn hints() {
        assert!(is_hint("/* pgsplit:primary */"));
        assert!(is_hint("/* PGSPLIT:PRIMARY */"));
        assert!(is_hint("/* app=x, pgsplit:primary */"));
        assert!(is_hint("/*NO LOAD BALANCE*/"));
        assert!(!is_hint("/* no load balance */"));
        assert!(!is_hint("/* pgsplit:standby */"));
    }

    fn pieces(sql: &str) -> Vec<&str> {
        scan(sql)
            .statements
            .iter()
            .map(|&(a, b)| sql[a..b].trim())
            .collect()
    }

    #[test]
    fn scan_splits_statements() {
        assert_eq!(
            pieces("BEGIN; SELECT 1;COMMIT"),
            ["BEGIN", "SELECT 1", "COMMIT"]
        );
        assert_eq!(pieces(" ; ;-- c\n; "), Vec::<&str>::new());
        assert_eq!(
            pieces("SELECT ';'; SELECT $$;$$"),
            ["SELECT ';'", "SELECT $$;$$"]
        );
        assert_eq!(pieces("SELECT 1 /* ; */"), ["SELECT 1 /* ; */"]);
        assert!(scan("SELECT 1; /* pgsplit:primary */").hint);
        assert!(!scan("SELECT '/* pgsplit:primary */'").hint);
    }

    #[test]
    fn scan_keeps_begin_atomic_bodies_whole() {
        let sql = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql \
                   BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; COMMIT";
        let got = pieces(sql);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].ends_with("SELECT 2; END"), "{got:?}");
        assert_eq!(got[1], "COMMIT");
        // Outside a routine definition BEGIN is a transaction start, not a body.
        assert_eq!(pieces("BEGIN; END"), ["BEGIN", "END"]);
    }
}
