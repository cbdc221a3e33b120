// pgjdbc through the proxy in transaction mode: DRIVER_CLIENTS concurrent connections with
// prepareThreshold=1 (server-side prepared statements from the first execution), batch
// inserts, transactions with savepoints, errors and recovery, a few types, and session
// settings that must follow each client.
//
// Prints one JSON summary line; exits non-zero with the reason on any failure.

import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Timestamp;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.UUID;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicInteger;

public class JdbcClient {
    static final int CLIENTS = Integer.parseInt(env("DRIVER_CLIENTS", "20"));
    static final int ROUNDS = Integer.parseInt(env("DRIVER_ROUNDS", "10"));

    static String env(String k, String d) {
        String v = System.getenv(k);
        return v == null || v.isEmpty() ? d : v;
    }

    static final AtomicInteger checks = new AtomicInteger();
    static final AtomicInteger migrated = new AtomicInteger();
    static final Set<Integer> pids = new TreeSet<>();
    static final ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();

    static void eq(String what, Object got, Object want) {
        if (!Objects.equals(got, want)) {
            throw new AssertionError(what + ": got " + got + ", want " + want);
        }
        checks.incrementAndGet();
    }

    static void fails(String what, String sqlState, Runnable r) {
        try {
            r.run();
        } catch (RuntimeException e) {
            Throwable c = e.getCause() != null ? e.getCause() : e;
            if (c instanceof SQLException && sqlState.equals(((SQLException) c).getSQLState())) {
                checks.incrementAndGet();
                return;
            }
            throw new AssertionError(what + ": got " + c + ", want SQLSTATE " + sqlState);
        }
        throw new AssertionError(what + ": succeeded, want SQLSTATE " + sqlState);
    }

    interface SQLRunnable {
        void run() throws SQLException;
    }

    static Runnable sql(SQLRunnable r) {
        return () -> {
            try {
                r.run();
            } catch (SQLException e) {
                throw new RuntimeException(e);
            }
        };
    }

    static Connection connect(int i) throws SQLException {
        String url = String.format("jdbc:postgresql://%s:%s/%s", System.getenv("PGHOST"), System.getenv("PGPORT"),
                System.getenv("PGDATABASE"));
        Properties p = new Properties();
        p.setProperty("user", System.getenv("PGUSER"));
        p.setProperty("password", System.getenv("PGPASSWORD"));
        p.setProperty("sslmode", "disable");
        p.setProperty("prepareThreshold", "1");
        p.setProperty("ApplicationName", "jdbc" + i);
        return DriverManager.getConnection(url, p);
    }

    static void client(int i) throws SQLException {
        Set<Integer> mine = new TreeSet<>();
        String tz = java.util.TimeZone.getDefault().getID();
        try (Connection c = connect(i)) {
            try (Statement st = c.createStatement()) {
                st.execute("SET pgb.client = 'c" + i + "'");
                st.execute("SET search_path = public, pg_catalog");
            }
            PreparedStatement settings = c.prepareStatement(
                    "SELECT current_setting('application_name'), current_setting('pgb.client'), current_setting('TimeZone'),"
                            + " current_setting('search_path'), pg_backend_pid()");
            PreparedStatement calc = c.prepareStatement("SELECT ?::int * 3, ?::text || '!'");
            PreparedStatement types = c.prepareStatement(
                    "SELECT ?::numeric, ?::timestamptz, ?::uuid, ?::bytea, ?::bool, ?::bigint, ?::int[], ?::jsonb::text, ?::date");
            PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_batch (client, round, n, label) VALUES (?, ?, ?, ?)");
            PreparedStatement count = c.prepareStatement("SELECT count(*) FROM jdbc_batch WHERE client = ? AND round = ?");
            PreparedStatement div = c.prepareStatement("SELECT 1 / ?::int");
            PreparedStatement txIns = c.prepareStatement("INSERT INTO jdbc_tx VALUES (?, ?, ?)");
            for (int r = 0; r < ROUNDS; r++) {
                try (ResultSet rs = settings.executeQuery()) {
                    rs.next();
                    mine.add(rs.getInt(5));
                    eq("settings", Arrays.asList(rs.getString(1), rs.getString(2), rs.getString(3), rs.getString(4)),
                            Arrays.asList("jdbc" + i, "c" + i, tz, "public, pg_catalog"));
                }
                for (int k = 0; k < 3; k++) {
                    calc.setInt(1, r + k);
                    calc.setString(2, "x" + k);
                    try (ResultSet rs = calc.executeQuery()) {
                        rs.next();
                        eq("calc", rs.getInt(1) + "/" + rs.getString(2), ((r + k) * 3) + "/x" + k + "!");
                    }
                }

                BigDecimal n = new BigDecimal("1234.5678");
                Timestamp ts = Timestamp.from(Instant.parse("2024-01-02T03:04:05.123456Z"));
                UUID u = new UUID(i, r);
                byte[] b = {0, 1, (byte) 0xff};
                types.setBigDecimal(1, n);
                types.setTimestamp(2, ts);
                types.setObject(3, u);
                types.setBytes(4, b);
                types.setBoolean(5, true);
                types.setLong(6, 1L << 40);
                types.setArray(7, c.createArrayOf("int4", new Integer[] {1, 2, i}));
                types.setString(8, "{\"k\": " + i + "}");
                types.setDate(9, java.sql.Date.valueOf("2024-02-29"));
                try (ResultSet rs = types.executeQuery()) {
                    rs.next();
                    eq("numeric", rs.getBigDecimal(1), n);
                    eq("timestamptz", rs.getTimestamp(2), ts);
                    eq("uuid", rs.getObject(3), u);
                    eq("bytea", Arrays.toString(rs.getBytes(4)), Arrays.toString(b));
                    eq("bool", rs.getBoolean(5), true);
                    eq("bigint", rs.getLong(6), 1L << 40);
                    Array a = rs.getArray(7);
                    eq("int[]", Arrays.toString((Integer[]) a.getArray()), Arrays.toString(new Integer[] {1, 2, i}));
                    eq("jsonb", rs.getString(8), "{\"k\": " + i + "}");
                    eq("date", rs.getDate(9).toString(), "2024-02-29");
                }

                // Batch insert in autocommit mode: one implicit transaction.
                for (int k = 0; k < 20; k++) {
                    ins.setInt(1, i);
                    ins.setInt(2, r);
                    ins.setInt(3, k);
                    ins.setString(4, "row " + k);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                eq("batch size", counts.length, 20);
                count.setInt(1, i);
                count.setInt(2, r);
                try (ResultSet rs = count.executeQuery()) {
                    rs.next();
                    eq("batch rows", rs.getInt(1), 20);
                }
                // A batch with a failing row: nothing of it stays.
                for (int k = 0; k < 5; k++) {
                    ins.setInt(1, i);
                    ins.setInt(2, -1 - r);
                    ins.setInt(3, k == 3 ? -1 : k);
                    ins.setString(4, "bad");
                    ins.addBatch();
                }
                fails("failing batch", "23514", sql(() -> ins.executeBatch()));

                // Transactions.
                c.setAutoCommit(false);
                txIns.setInt(1, i);
                txIns.setInt(2, r);
                txIns.setBoolean(3, true);
                txIns.executeUpdate();
                Savepoint sp = c.setSavepoint();
                txIns.setBoolean(3, false);
                txIns.executeUpdate();
                div.setInt(1, 0);
                fails("division by zero", "22012", sql(() -> div.executeQuery().close()));
                c.rollback(sp);
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT txid_current_if_assigned() IS NOT NULL")) {
                    rs.next();
                    eq("in tx", rs.getBoolean(1), true);
                }
                c.commit();
                txIns.setBoolean(3, false);
                txIns.executeUpdate();
                c.rollback();
                txIns.executeUpdate();
                fails("division by zero in tx", "22012", sql(() -> div.executeQuery().close()));
                fails("failed transaction", "25P02", sql(() -> calc.executeQuery().close()));
                c.rollback();
                c.setAutoCommit(true);
                try (Statement st = c.createStatement();
                        ResultSet rs = st.executeQuery("SELECT count(*) FROM jdbc_tx WHERE client = " + i + " AND n = " + r)) {
                    rs.next();
                    eq("tx rows", rs.getInt(1), 1);
                }
                div.setInt(1, 1);
                try (ResultSet rs = div.executeQuery()) {
                    rs.next();
                    eq("after errors", rs.getInt(1), 1);
                }
            }
        }
        synchronized (pids) {
            pids.addAll(mine);
        }
        if (mine.size() > 1) {
            migrated.incrementAndGet();
        }
    }

    public static void main(String[] args) throws Exception {
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < CLIENTS; i++) {
            final int n = i;
            Thread t = new Thread(() -> {
                try {
                    client(n);
                } catch (Throwable e) {
                    java.io.StringWriter sw = new java.io.StringWriter();
                    e.printStackTrace(new java.io.PrintWriter(sw));
                    errors.add("client " + n + ": " + sw);
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        if (!errors.isEmpty()) {
            for (String e : errors) {
                System.err.println(e);
            }
            System.exit(1);
        }
        StringBuilder ps = new StringBuilder();
        for (int p : pids) {
            ps.append(ps.length() == 0 ? "" : ",").append(p);
        }
        System.out.printf("{\"driver\":\"pgjdbc %s\",\"clients\":%d,\"pids\":[%s],\"migrated\":%d,\"checks\":%d}%n",
                org.postgresql.util.DriverInfo.DRIVER_VERSION, CLIENTS - errors.size(), ps, migrated.get(), checks.get());
    }
}
