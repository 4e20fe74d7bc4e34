// pgjdbc compatibility probe: named checks of the JDBC driver's behaviour against one
// server (directly or through pgsplit). Prints `PASS name` or `FAIL name: message`, one a
// line, on stdout; tests/compat/run.sh runs it for both targets and compares.
//
//   java -cp .:/usr/share/java/postgresql.jar PgjdbcProbe JDBC_URL USER PASSWORD [CHECK...]
//
// Every check opens its own connections and uses its own tables (prefixed compat_), so
// checks are independent; expectations are those of a plain PostgreSQL server.

import java.io.ByteArrayInputStream;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class PgjdbcProbe {
    static String url, user, password;

    interface Check {
        void run() throws Exception;
    }

    static Connection connect(String... props) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        for (int i = 0; i + 1 < props.length; i += 2) p.setProperty(props[i], props[i + 1]);
        return DriverManager.getConnection(url, p);
    }

    static void expect(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static void expectEq(Object want, Object got, String what) {
        if (!Objects.equals(want, got)) throw new AssertionError(what + ": want " + want + ", got " + got);
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            expect(rs.next(), "no row from " + sql);
            return rs.getObject(1);
        }
    }

    static long count(Connection c, String table) throws SQLException {
        return ((Number) one(c, "SELECT count(*) FROM " + table)).longValue();
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        }
    }

    /** A fresh table `name` (id serial primary key, v int, t text), made and committed. */
    static void table(String name) throws SQLException {
        try (Connection c = connect()) {
            exec(c, "DROP TABLE IF EXISTS " + name);
            exec(c, "CREATE TABLE " + name + " (id serial PRIMARY KEY, v int, t text)");
        }
    }

    /** Runs `sql`, expects it to fail with SQLSTATE `state`. */
    static void expectError(Connection c, String sql, String state) {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        } catch (SQLException e) {
            expectEq(state, e.getSQLState(), "SQLSTATE of " + sql + " (" + e.getMessage() + ")");
            return;
        }
        throw new AssertionError("no error from " + sql);
    }

    /** Autosave modes: an insert, a failing statement, another insert, then commit; with
     *  always the transaction survives the failure, with conservative and never it does not. */
    static void autosave(String mode, String table) throws Exception {
        table(table);
        try (Connection c = connect("autosave", mode)) {
            c.setAutoCommit(false);
            exec(c, "INSERT INTO " + table + " (v) VALUES (1)");
            expectError(c, "SELECT 1/0", "22012");
            boolean secondOk;
            try {
                exec(c, "INSERT INTO " + table + " (v) VALUES (2)");
                secondOk = true;
            } catch (SQLException e) {
                expectEq("25P02", e.getSQLState(), "after the failure (" + e.getMessage() + ")");
                secondOk = false;
            }
            try {
                c.commit();
            } catch (SQLException e) {
                // pgjdbc >= 42.6 reports a COMMIT the server turned into ROLLBACK.
                if (secondOk) throw e;
            }
            long n;
            try (Connection d = connect()) {
                n = count(d, table);
            }
            if (!mode.equals("always")) {
                // conservative only rolls back to its savepoint for errors a retry can heal
                // (cached plans): a division by zero aborts the transaction as with never.
                expect(!secondOk, "autosave=" + mode + ": the transaction should be aborted");
                expectEq(0L, n, "rows after commit of an aborted transaction");
            } else {
                expect(secondOk, "autosave=" + mode + ": the transaction should survive the failure");
                expectEq(2L, n, "rows after commit");
            }
            // The connection must be usable afterwards.
            c.setAutoCommit(true);
            expectEq(1, one(c, "SELECT 1"), "SELECT 1 afterwards");
        }
    }

    static final LinkedHashMap<String, Check> CHECKS = new LinkedHashMap<>();

    static void check(String name, Check c) {
        CHECKS.put(name, c);
    }

    static {
        check("basic_select", () -> {
            try (Connection c = connect()) {
                expectEq(1, one(c, "SELECT 1"), "SELECT 1");
                expectEq("hello", one(c, "SELECT 'hello'::text"), "text");
                expect(c.getMetaData().getDatabaseProductVersion().matches("\\d+.*"), "version");
            }
        });
        check("write_then_read_autocommit", () -> {
            table("compat_wr");
            try (Connection c = connect()) {
                for (int i = 0; i < 20; i++) {
                    exec(c, "INSERT INTO compat_wr (v) VALUES (" + i + ")");
                    expectEq((long) i + 1, count(c, "compat_wr"), "rows right after insert " + i);
                }
            }
        });
        check("prepared_reuse_past_threshold", () -> {
            try (Connection c = connect("prepareThreshold", "3");
                    PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2")) {
                for (int i = 0; i < 12; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "row");
                        expectEq(i * 2, rs.getInt(1), "result " + i);
                    }
                }
                expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), "server-prepared after threshold");
            }
        });
        check("prepared_many_statements", () -> {
            // More distinct statements than the cache holds, each used past the threshold.
            try (Connection c = connect("prepareThreshold", "1", "preparedStatementCacheQueries", "8")) {
                for (int round = 0; round < 3; round++) {
                    for (int k = 0; k < 20; k++) {
                        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + " + k)) {
                            ps.setInt(1, round);
                            try (ResultSet rs = ps.executeQuery()) {
                                expect(rs.next(), "row");
                                expectEq(round + k, rs.getInt(1), "result");
                            }
                        }
                    }
                }
            }
        });
        check("prepared_after_ddl", () -> {
            table("compat_ddl");
            try (Connection c = connect("prepareThreshold", "1");
                    PreparedStatement ps = c.prepareStatement("SELECT * FROM compat_ddl")) {
                exec(c, "INSERT INTO compat_ddl (v) VALUES (1)");
                for (int i = 0; i < 3; i++) ps.executeQuery().close();
                exec(c, "ALTER TABLE compat_ddl ADD COLUMN extra int");
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "row");
                    expectEq(4, rs.getMetaData().getColumnCount(), "columns after ALTER");
                }
            }
        });
        check("batch_insert", () -> {
            table("compat_batch");
            try (Connection c = connect();
                    PreparedStatement ps = c.prepareStatement("INSERT INTO compat_batch (v, t) VALUES (?, ?)")) {
                for (int i = 0; i < 500; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "row " + i);
                    ps.addBatch();
                }
                int[] n = ps.executeBatch();
                expectEq(500, n.length, "batch result count");
                expectEq(500L, count(c, "compat_batch"), "rows");
            }
        });
        check("batch_insert_rewritten", () -> {
            table("compat_batch_rw");
            try (Connection c = connect("reWriteBatchedInserts", "true");
                    PreparedStatement ps = c.prepareStatement("INSERT INTO compat_batch_rw (v) VALUES (?)")) {
                c.setAutoCommit(false);
                for (int i = 0; i < 1000; i++) {
                    ps.setInt(1, i);
                    ps.addBatch();
                }
                ps.executeBatch();
                c.commit();
                expectEq(1000L, count(c, "compat_batch_rw"), "rows");
            }
        });
        check("transaction_commit", () -> {
            table("compat_tx");
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                exec(c, "INSERT INTO compat_tx (v) VALUES (1)");
                expectEq(1L, count(c, "compat_tx"), "own write inside the transaction");
                try (Connection d = connect()) {
                    expectEq(0L, count(d, "compat_tx"), "others before commit");
                }
                c.commit();
                try (Connection d = connect()) {
                    expectEq(1L, count(d, "compat_tx"), "others after commit");
                }
            }
        });
        check("transaction_rollback", () -> {
            table("compat_rb");
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                exec(c, "INSERT INTO compat_rb (v) VALUES (1)");
                c.rollback();
                expectEq(0L, count(c, "compat_rb"), "rows after rollback");
                c.commit();
            }
        });
        check("autosave_always", () -> autosave("always", "compat_as_always"));
        check("autosave_conservative", () -> autosave("conservative", "compat_as_conservative"));
        check("autosave_never", () -> autosave("never", "compat_as_never"));
        check("autosave_conservative_cached_plan", () -> {
            // What conservative exists for: a server-prepared statement whose result type
            // changed is re-prepared and retried inside the transaction.
            table("compat_as_plan");
            try (Connection c = connect("autosave", "conservative", "prepareThreshold", "1")) {
                exec(c, "INSERT INTO compat_as_plan (v) VALUES (1)");
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("SELECT * FROM compat_as_plan")) {
                    for (int i = 0; i < 3; i++) ps.executeQuery().close();
                    exec(c, "ALTER TABLE compat_as_plan ALTER COLUMN v TYPE bigint");
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "row");
                        expectEq(1L, rs.getLong(2), "value");
                    }
                }
                c.commit();
            }
        });
        check("savepoints", () -> {
            table("compat_sp");
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                exec(c, "INSERT INTO compat_sp (v) VALUES (1)");
                Savepoint sp = c.setSavepoint("sp1");
                exec(c, "INSERT INTO compat_sp (v) VALUES (2)");
                c.rollback(sp);
                Savepoint sp2 = c.setSavepoint();
                exec(c, "INSERT INTO compat_sp (v) VALUES (3)");
                expectError(c, "INSERT INTO compat_sp (id, v) VALUES (1, 9)", "23505");
                c.rollback(sp2);
                exec(c, "INSERT INTO compat_sp (v) VALUES (4)");
                c.releaseSavepoint(sp);
                c.commit();
                try (Statement s = c.createStatement();
                        ResultSet rs = s.executeQuery("SELECT array_agg(v ORDER BY v)::text FROM compat_sp")) {
                    rs.next();
                    expectEq("{1,4}", rs.getString(1), "surviving rows");
                }
                c.commit();
            }
        });
        check("generated_keys", () -> {
            table("compat_keys");
            try (Connection c = connect();
                    PreparedStatement ps = c.prepareStatement(
                            "INSERT INTO compat_keys (v) VALUES (?)", Statement.RETURN_GENERATED_KEYS)) {
                for (int i = 1; i <= 3; i++) {
                    ps.setInt(1, i * 10);
                    expectEq(1, ps.executeUpdate(), "update count");
                    try (ResultSet rs = ps.getGeneratedKeys()) {
                        expect(rs.next(), "a generated key");
                        expectEq(i, rs.getInt("id"), "generated id");
                    }
                }
            }
        });
        check("fetch_size_cursor", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (Statement s = c.createStatement()) {
                    s.setFetchSize(100);
                    long n = 0, sum = 0;
                    try (ResultSet rs = s.executeQuery("SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g")) {
                        while (rs.next()) {
                            n++;
                            sum += rs.getInt(1);
                        }
                    }
                    expectEq(50000L, n, "rows");
                    expectEq(50000L * 50001 / 2, sum, "sum");
                }
                c.commit();
            }
        });
        check("large_result_autocommit", () -> {
            try (Connection c = connect(); Statement s = c.createStatement();
                    ResultSet rs = s.executeQuery("SELECT g, md5(g::text) FROM generate_series(1, 200000) g")) {
                long n = 0;
                while (rs.next()) n++;
                expectEq(200000L, n, "rows");
            }
        });
        check("listen_notify", () -> {
            try (Connection l = connect(); Connection n = connect()) {
                exec(l, "LISTEN compat_channel");
                exec(n, "NOTIFY compat_channel, 'hello'");
                PGNotification[] got = l.unwrap(PGConnection.class).getNotifications(5000);
                expect(got != null && got.length == 1, "one notification, got "
                        + (got == null ? "none" : got.length));
                expectEq("compat_channel", got[0].getName(), "channel");
                expectEq("hello", got[0].getParameter(), "payload");
                exec(l, "UNLISTEN *");
            }
        });
        check("copy_in_out", () -> {
            table("compat_copy");
            try (Connection c = connect()) {
                CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
                StringBuilder sb = new StringBuilder();
                for (int i = 0; i < 10000; i++) sb.append(i).append('\t').append("line ").append(i).append('\n');
                long in = cm.copyIn("COPY compat_copy (v, t) FROM STDIN",
                        new ByteArrayInputStream(sb.toString().getBytes(StandardCharsets.UTF_8)));
                expectEq(10000L, in, "rows copied in");
                StringWriter w = new StringWriter();
                long out = cm.copyOut("COPY (SELECT v, t FROM compat_copy ORDER BY v) TO STDOUT", w);
                expectEq(10000L, out, "rows copied out");
                expectEq(sb.toString(), w.toString(), "copied-out text");
            }
        });
        check("binary_transfer", () -> {
            try (Connection c = connect("binaryTransfer", "true", "prepareThreshold", "-1");
                    PreparedStatement ps = c.prepareStatement(
                            "SELECT 42::int4, 9000000000::int8, 1.5::float8, 12.345::numeric, '\\x0102ff'::bytea,"
                                    + " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, DATE '2024-02-29', ?::int4")) {
                ps.setInt(1, 7);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "row");
                    expectEq(42, rs.getInt(1), "int4");
                    expectEq(9000000000L, rs.getLong(2), "int8");
                    expectEq(1.5, rs.getDouble(3), "float8");
                    expectEq(new BigDecimal("12.345"), rs.getBigDecimal(4), "numeric");
                    expect(Arrays.equals(new byte[] {1, 2, (byte) 0xff}, rs.getBytes(5)), "bytea");
                    expectEq(UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), rs.getObject(6), "uuid");
                    expectEq("2024-02-29", rs.getDate(7).toString(), "date");
                    expectEq(7, rs.getInt(8), "parameter");
                }
            }
        });
        check("metadata", () -> {
            table("compat_meta");
            try (Connection c = connect()) {
                DatabaseMetaData md = c.getMetaData();
                try (ResultSet rs = md.getTables(null, "public", "compat_meta", new String[] {"TABLE"})) {
                    expect(rs.next(), "getTables finds compat_meta");
                }
                List<String> cols = new ArrayList<>();
                try (ResultSet rs = md.getColumns(null, "public", "compat_meta", null)) {
                    while (rs.next()) cols.add(rs.getString("COLUMN_NAME"));
                }
                expectEq(List.of("id", "v", "t"), cols, "getColumns");
                try (ResultSet rs = md.getPrimaryKeys(null, "public", "compat_meta")) {
                    expect(rs.next(), "a primary key");
                    expectEq("id", rs.getString("COLUMN_NAME"), "primary key column");
                }
                try (ResultSet rs = md.getTypeInfo()) {
                    expect(rs.next(), "getTypeInfo rows");
                }
                expectEq(user, md.getUserName(), "getUserName");
            }
        });
        check("timestamps_timezones", () -> {
            try (Connection c = connect()) {
                exec(c, "SET TIME ZONE 'America/New_York'");
                expectEq("America/New_York", one(c, "SHOW TimeZone"), "TimeZone after SET");
                expectEq("2024-01-01 07:00:00-05",
                        one(c, "SELECT '2024-01-01 12:00:00+00'::timestamptz::text"), "timestamptz text");
                Timestamp ts = Timestamp.valueOf("2024-06-01 10:11:12.345678");
                try (PreparedStatement ps = c.prepareStatement("SELECT ?::timestamp, ?::timestamptz")) {
                    Calendar utc = Calendar.getInstance(TimeZone.getTimeZone("UTC"));
                    ps.setTimestamp(1, ts);
                    ps.setTimestamp(2, ts, utc);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        expectEq(ts, rs.getTimestamp(1), "timestamp round trip");
                        expectEq(ts, rs.getTimestamp(2, utc), "timestamptz round trip in UTC");
                    }
                }
                for (int i = 0; i < 5; i++)
                    expectEq("America/New_York", one(c, "SHOW TimeZone"), "TimeZone still set");
            }
        });
        check("arrays", () -> {
            try (Connection c = connect(); PreparedStatement ps = c.prepareStatement("SELECT ?::int4[], ?::text[]")) {
                ps.setArray(1, c.createArrayOf("int4", new Integer[] {1, 2, 3}));
                ps.setArray(2, c.createArrayOf("text", new String[] {"a", "b c", null, "\"q\""}));
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    expect(Arrays.equals(new Integer[] {1, 2, 3}, (Object[]) rs.getArray(1).getArray()), "int4[]");
                    expect(Arrays.equals(new String[] {"a", "b c", null, "\"q\""}, (Object[]) rs.getArray(2).getArray()),
                            "text[]");
                }
            }
        });
        check("client_encoding_datestyle", () -> {
            try (Connection c = connect()) {
                expectEq("UTF8", one(c, "SHOW client_encoding"), "client_encoding");
                expect(((String) one(c, "SHOW DateStyle")).startsWith("ISO"), "DateStyle starts with ISO");
                exec(c, "SET DateStyle = 'ISO, DMY'"); // still ISO: allowed
                expectEq("ISO, DMY", one(c, "SHOW DateStyle"), "DateStyle after SET");
                expectEq("UTF8", one(c, "SHOW client_encoding"), "client_encoding unchanged");
                expectEq("héllo wörld ✓", one(c, "SELECT 'héllo wörld ✓'::text"), "non-ASCII text");
            }
            // The driver refuses a server that switches DateStyle away from ISO: it must see
            // the ParameterStatus message.
            try (Connection c = connect()) {
                try {
                    exec(c, "SET DateStyle = 'German'");
                    throw new AssertionError("no error after SET DateStyle = German");
                } catch (SQLException e) {
                    expect(String.valueOf(e.getMessage()).contains("DateStyle"), "error names DateStyle: " + e.getMessage());
                }
            }
            try (Connection c = connect()) {
                try {
                    exec(c, "SET client_encoding = 'LATIN1'");
                    throw new AssertionError("no error after SET client_encoding = LATIN1");
                } catch (SQLException e) {
                    expect(String.valueOf(e.getMessage()).contains("client_encoding"),
                            "error names client_encoding: " + e.getMessage());
                }
            }
        });
        check("read_only_transaction", () -> {
            table("compat_ro");
            try (Connection c = connect()) {
                c.setReadOnly(true);
                c.setAutoCommit(false);
                expectEq("on", one(c, "SHOW transaction_read_only"), "transaction_read_only");
                expectEq(0L, count(c, "compat_ro"), "read");
                expectError(c, "INSERT INTO compat_ro (v) VALUES (1)", "25006");
                c.rollback();
                c.setReadOnly(false);
                exec(c, "INSERT INTO compat_ro (v) VALUES (1)");
                c.commit();
                expectEq(1L, count(c, "compat_ro"), "rows after a read-write transaction");
                c.commit();
            }
        });
        check("read_only_autocommit_session", () -> {
            table("compat_ro2");
            try (Connection c = connect("readOnlyMode", "always")) {
                c.setReadOnly(true);
                expectEq("on", one(c, "SHOW transaction_read_only"), "transaction_read_only");
                expectError(c, "INSERT INTO compat_ro2 (v) VALUES (1)", "25006");
                c.setReadOnly(false);
                exec(c, "INSERT INTO compat_ro2 (v) VALUES (1)");
                expectEq(1L, count(c, "compat_ro2"), "rows");
            }
        });
        check("temp_table_session_state", () -> {
            try (Connection c = connect()) {
                exec(c, "CREATE TEMP TABLE compat_tmp (v int)");
                exec(c, "INSERT INTO compat_tmp VALUES (1), (2)");
                for (int i = 0; i < 5; i++) expectEq(2L, count(c, "compat_tmp"), "temp table rows");
                exec(c, "SET application_name = 'compat-probe'");
                expectEq("compat-probe", one(c, "SHOW application_name"), "application_name");
            }
        });
        check("query_cancel_timeout", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                s.setQueryTimeout(1);
                long t0 = System.nanoTime();
                try {
                    s.execute("SELECT pg_sleep(10)");
                    throw new AssertionError("pg_sleep(10) was not cancelled");
                } catch (SQLException e) {
                    expectEq("57014", e.getSQLState(), "SQLSTATE (" + e.getMessage() + ")");
                }
                expect(System.nanoTime() - t0 < 8_000_000_000L, "cancelled within 8 s");
                expectEq(1, one(c, "SELECT 1"), "connection usable after cancel");
            }
        });
        check("multiple_results", () -> {
            try (Connection c = connect(); Statement s = c.createStatement()) {
                expect(s.execute("SELECT 1; SELECT 2, 3; SELECT 'x'"), "first is a result set");
                int sets = 1;
                while (s.getMoreResults() || s.getUpdateCount() != -1) sets++;
                expectEq(3, sets, "result sets");
            }
        });
        check("error_codes", () -> {
            table("compat_err");
            try (Connection c = connect()) {
                exec(c, "INSERT INTO compat_err (id, v) VALUES (1, 1)");
                expectError(c, "INSERT INTO compat_err (id, v) VALUES (1, 1)", "23505");
                expectError(c, "SELECT * FROM compat_no_such_table", "42P01");
                expectError(c, "SELEC 1", "42601");
                expectEq(1, one(c, "SELECT 1"), "usable after errors");
            }
        });
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: PgjdbcProbe JDBC_URL USER PASSWORD [CHECK...]");
            System.exit(2);
        }
        url = args[0];
        user = args[1];
        password = args[2];
        Set<String> only = new HashSet<>(Arrays.asList(args).subList(3, args.length));
        int failed = 0;
        for (Map.Entry<String, Check> e : CHECKS.entrySet()) {
            if (!only.isEmpty() && !only.contains(e.getKey())) continue;
            long t0 = System.nanoTime();
            try {
                e.getValue().run();
                System.out.println("PASS " + e.getKey());
            } catch (Throwable t) {
                failed++;
                String msg = (t.getClass().getSimpleName() + ": " + t.getMessage()).replace('\n', ' ');
                System.out.println("FAIL " + e.getKey() + ": " + msg);
                t.printStackTrace(System.err);
            }
            System.err.printf("%s took %d ms%n", e.getKey(), (System.nanoTime() - t0) / 1_000_000);
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
