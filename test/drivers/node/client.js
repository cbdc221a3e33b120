// node-postgres (npm "pg") through the proxy in transaction mode: DRIVER_CLIENTS concurrent
// clients using named prepared statements ({name, text, values}: Parse once per connection,
// then Bind only), parameterised queries, transactions, errors and recovery, session settings
// that must follow each client, and a pg.Pool.
//
// Prints one JSON summary line; exits non-zero with the reason on any failure.
'use strict'

const pg = require('pg')

const CLIENTS = parseInt(process.env.DRIVER_CLIENTS || '20', 10)
const ROUNDS = parseInt(process.env.DRIVER_ROUNDS || '10', 10)
const connectionString = process.env.DRIVER_DSN

class Check {
  constructor () { this.n = 0 }
  eq (what, got, want) {
    const g = JSON.stringify(got)
    const w = JSON.stringify(want)
    if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`)
    this.n++
  }
  async fails (what, code, p) {
    try {
      await p
    } catch (err) {
      if (err.code !== code) throw new Error(`${what}: got error ${err.code} ${err.message}, want ${code}`)
      this.n++
      return
    }
    throw new Error(`${what}: succeeded, want error ${code}`)
  }
}

async function client (i) {
  const chk = new Check()
  const pids = new Set()
  const c = new pg.Client({ connectionString, application_name: `node${i}` })
  await c.connect()
  try {
    await c.query(`SET pgb.client = 'c${i}'`)
    await c.query(`SET TimeZone = 'Etc/GMT-${i % 12}'`)
    for (let r = 0; r < ROUNDS; r++) {
      // Settings follow the client; a named statement shared by all clients.
      let res = await c.query({
        name: 'settings',
        text: "SELECT current_setting('application_name') AS app, current_setting('pgb.client') AS c, current_setting('TimeZone') AS tz, pg_backend_pid() AS pid"
      })
      pids.add(res.rows[0].pid)
      chk.eq('settings', [res.rows[0].app, res.rows[0].c, res.rows[0].tz], [`node${i}`, `c${i}`, `Etc/GMT-${i % 12}`])

      // Named prepared statements: node-postgres parses each name once per connection and
      // afterwards sends only Bind/Execute, wherever the proxy runs it.
      for (let k = 0; k < 5; k++) {
        res = await c.query({ name: `mul${k}`, text: `SELECT $1::int * ${k + 1} AS v, $2::text AS t`, values: [r + i, `t${k}`] })
        chk.eq('named', [res.rows[0].v, res.rows[0].t], [(r + i) * (k + 1), `t${k}`])
      }
      // The same name in every client but a text that differs between clients.
      res = await c.query({ name: 'own', text: `SELECT ${i} AS who, $1::int AS v`, values: [r] })
      chk.eq('per-client text', [res.rows[0].who, res.rows[0].v], [i, r])

      // Unnamed parameterised queries, and a few types.
      res = await c.query('SELECT $1::numeric AS n, $2::jsonb AS j, $3::int[] AS a, $4::bool AS b, $5::timestamptz AS ts',
        ['1.50', JSON.stringify({ k: i }), [1, 2, i], true, '2024-01-02T03:04:05Z'])
      const row = res.rows[0]
      chk.eq('types', [row.n, row.j, row.a, row.b, row.ts.toISOString()], ['1.50', { k: i }, [1, 2, i], true, '2024-01-02T03:04:05.000Z'])

      // Transactions: commit, rollback, and a failed transaction.
      await c.query('BEGIN')
      await c.query({ name: 'ins', text: 'INSERT INTO node_tx VALUES ($1, $2, $3)', values: [i, r, true] })
      res = await c.query('SELECT txid_current_if_assigned() IS NOT NULL AS has')
      chk.eq('in tx', res.rows[0].has, true)
      await c.query('COMMIT')
      await c.query('BEGIN')
      await c.query({ name: 'ins', text: 'INSERT INTO node_tx VALUES ($1, $2, $3)', values: [i, r, false] })
      await c.query('ROLLBACK')
      await c.query('BEGIN')
      await c.query({ name: 'ins', text: 'INSERT INTO node_tx VALUES ($1, $2, $3)', values: [i, r, false] })
      await chk.fails('division by zero', '22012', c.query({ name: 'div', text: 'SELECT 1 / $1::int AS v', values: [0] }))
      await chk.fails('failed transaction', '25P02', c.query({ name: 'mul0', text: 'SELECT $1::int * 1 AS v, $2::text AS t', values: [1, 'x'] }))
      await c.query('ROLLBACK')
      res = await c.query({ name: 'count', text: 'SELECT count(*)::int AS n FROM node_tx WHERE client = $1 AND n = $2', values: [i, r] })
      chk.eq('tx rows', res.rows[0].n, 1)

      // Errors outside a transaction; the named statement that failed is usable afterwards.
      await chk.fails('named error', '22012', c.query({ name: 'div', text: 'SELECT 1 / $1::int AS v', values: [0] }))
      res = await c.query({ name: 'div', text: 'SELECT 1 / $1::int AS v', values: [1] })
      chk.eq('named after error', res.rows[0].v, 1)
      await chk.fails('syntax error', '42601', c.query('SELEC 1'))
    }
  } finally {
    await c.end()
  }
  return { pids, checks: chk.n }
}

async function pooled (pool, i) {
  const res = await pool.query({ name: 'pool', text: 'SELECT $1::int + 1 AS v, pg_backend_pid() AS pid', values: [i] })
  if (res.rows[0].v !== i + 1) throw new Error(`pool query: got ${res.rows[0].v}`)
  return res.rows[0].pid
}

async function main () {
  const results = await Promise.allSettled(Array.from({ length: CLIENTS }, (_, i) => client(i)))
  const errs = results.map((r, i) => r.status === 'rejected' ? `client ${i}: ${r.reason && r.reason.stack}` : null).filter(Boolean)
  if (errs.length > 0) {
    console.error(errs.join('\n'))
    process.exit(1)
  }
  const pids = new Set()
  let checks = 0
  let migrated = 0
  for (const r of results) {
    for (const p of r.value.pids) pids.add(p)
    checks += r.value.checks
    if (r.value.pids.size > 1) migrated++
  }
  const pool = new pg.Pool({ connectionString, max: CLIENTS })
  try {
    for (const pid of await Promise.all(Array.from({ length: 5 * CLIENTS }, (_, i) => pooled(pool, i)))) {
      pids.add(pid)
      checks++
    }
  } finally {
    await pool.end()
  }
  console.log(JSON.stringify({
    driver: 'node-postgres ' + require('pg/package.json').version,
    clients: results.length,
    pids: [...pids].sort((a, b) => a - b),
    migrated,
    checks
  }))
}

main().catch(err => {
  console.error(err && err.stack)
  process.exit(1)
})
