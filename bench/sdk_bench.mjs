// Performance under sustained load (issue 19), through the official `e2b` client as a user's
// agent drives it, against the moatd that sdk_bench.sh started. One phase per run, chosen by
// SDK_BENCH_PHASE; each prints one JSON object:
//   fresh    create -> commands.run('true') twice -> python3 -c pass twice -> kill, in fresh
//            sandboxes with the pool given time to refill between them (first vs second)
//   loop     the agent loop create -> commands.run('true') -> kill, serial, SDK_BENCH_N times
//   loop4    the same loop in 4 concurrent workers (SDK_BENCH_N iterations in all)
//   creates  create -> kill as fast as 4 workers go for SDK_BENCH_SUSTAIN_S seconds
//   port     create -> start `python3 -m http.server` in the background -> first answer
//   idle     SDK_BENCH_IDLE sandboxes created and left idle; PSS of each (moatd's metrics)
// Sandbox ids go out in the JSON ("ids": in order) so that sdk_bench.sh can join them with
// moatd's log (pool hits, teardown times).
import { Sandbox } from 'e2b'

const phase = process.env.SDK_BENCH_PHASE
const N = Number(process.env.SDK_BENCH_N || 100)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const now = () => performance.now()
const api = process.env.E2B_API_URL
const key = process.env.E2B_API_KEY

function stats(xs) {
  if (xs.length === 0) return { n: 0 }
  const s = [...xs].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  const r = (v) => Math.round(v * 10) / 10
  const mean = s.reduce((a, b) => a + b, 0) / s.length
  return { n: s.length, p50: r(q(0.5)), p90: r(q(0.9)), p99: r(q(0.99)), mean: r(mean), min: r(s[0]), max: r(s[s.length - 1]) }
}

async function run(sbx, cmd) {
  const r = await sbx.commands.run(cmd)
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`)
  return r
}

// One iteration of the agent loop; its parts in ms.
async function iteration(ids) {
  const t0 = now()
  const sbx = await Sandbox.create()
  const t1 = now()
  await run(sbx, 'true')
  const t2 = now()
  await sbx.kill()
  const t3 = now()
  ids.push(sbx.sandboxId)
  return { total: t3 - t0, create: t1 - t0, command: t2 - t1, kill: t3 - t2 }
}

function loopStats(parts) {
  return {
    iteration_ms: stats(parts.map((p) => p.total)),
    create_ms: stats(parts.map((p) => p.create)),
    first_command_ms: stats(parts.map((p) => p.command)),
    kill_ms: stats(parts.map((p) => p.kill)),
  }
}

async function pssMiB(id) {
  // moatd samples usage every few seconds: the newest sample.
  for (let i = 0; i < 150; i++) {
    const res = await fetch(`${api}/sandboxes/${id}/metrics`, { headers: { 'X-API-Key': key } })
    const samples = await res.json()
    if (Array.isArray(samples) && samples.length > 0) return samples[samples.length - 1].memUsed / 2 ** 20
    await sleep(200)
  }
  throw new Error(`no metrics for ${id}`)
}

const out = { phase }
const ids = []
if (phase === 'fresh') {
  const first = [], second = [], py1 = [], py2 = [], create = []
  for (let i = 0; i < N; i++) {
    await sleep(Number(process.env.SDK_BENCH_GAP_MS || 3000))  // the pool refills meanwhile
    let t = now()
    const sbx = await Sandbox.create()
    create.push(now() - t)
    t = now(); await run(sbx, 'true'); first.push(now() - t)
    t = now(); await run(sbx, 'true'); second.push(now() - t)
    t = now(); await run(sbx, 'python3 -c pass'); py1.push(now() - t)
    t = now(); await run(sbx, 'python3 -c pass'); py2.push(now() - t)
    ids.push(sbx.sandboxId)
    await sbx.kill()
  }
  Object.assign(out, {
    create_ms: stats(create),
    first_command_ms: stats(first),
    second_command_ms: stats(second),
    first_python3_ms: stats(py1),
    second_python3_ms: stats(py2),
  })
  out.first_over_second = Math.round((out.first_command_ms.p50 / out.second_command_ms.p50) * 1000) / 1000
  out.python3_first_over_second = Math.round((out.first_python3_ms.p50 / out.second_python3_ms.p50) * 1000) / 1000
} else if (phase === 'loop') {
  const parts = []
  for (let i = 0; i < N; i++) parts.push(await iteration(ids))
  Object.assign(out, { iterations: N }, loopStats(parts))
} else if (phase === 'loop4') {
  const parts = []
  let errors = 0
  const worker = async () => {
    for (let i = 0; i < N / 4; i++) {
      try {
        parts.push(await iteration(ids))
      } catch (e) {
        errors++
        console.error(`loop4: ${e}`)
      }
    }
  }
  const t0 = now()
  await Promise.all([worker(), worker(), worker(), worker()])
  Object.assign(out, { workers: 4, iterations: N, errors, wall_s: Math.round((now() - t0) / 100) / 10 }, loopStats(parts))
} else if (phase === 'creates') {
  const seconds = Number(process.env.SDK_BENCH_SUSTAIN_S || 60)
  const create = [], kill = []
  let errors = 0
  const end = now() + seconds * 1000
  const worker = async () => {
    while (now() < end) {
      try {
        let t = now()
        const sbx = await Sandbox.create()
        create.push(now() - t)
        t = now()
        await sbx.kill()
        kill.push(now() - t)
        ids.push(sbx.sandboxId)
      } catch (e) {
        if (errors++ < 5) console.error(`creates: ${e}`)
        await sleep(200)  // an error is counted, not hammered
      }
    }
  }
  const t0 = now()
  await Promise.all([worker(), worker(), worker(), worker()])
  const wall = (now() - t0) / 1000
  Object.assign(out, {
    workers: 4, seconds, errors, creates: create.length,
    creates_per_s: Math.round((create.length / wall) * 100) / 100,
    create_ms: stats(create), kill_ms: stats(kill),
  })
} else if (phase === 'port') {
  const reach = []
  for (let i = 0; i < Math.min(N, 10); i++) {
    await sleep(3000)
    const t0 = now()
    const sbx = await Sandbox.create()
    await sbx.commands.run('python3 -m http.server 8000', { background: true })
    // The port proxy by header (getHost's wildcard name needs DNS the bench does not have).
    const headers = { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000' }
    for (;;) {
      try {
        const res = await fetch(`${api}/`, { headers, signal: AbortSignal.timeout(2000) })
        if (res.status === 200) break
      } catch {}
      if (now() - t0 > 30000) throw new Error(`port 8000 of ${sbx.sandboxId} not reachable in 30 s`)
      await sleep(25)
    }
    reach.push(now() - t0)
    ids.push(sbx.sandboxId)
    await sbx.kill()
  }
  out.create_to_port_answer_ms = stats(reach)
} else if (phase === 'idle') {
  const count = Number(process.env.SDK_BENCH_IDLE || 50)
  const sandboxes = []
  let errors = 0
  const t0 = now()
  let started = 0
  const worker = async () => {
    while (started < count) {
      started++
      try {
        sandboxes.push(await Sandbox.create({ timeoutMs: 600_000 }))
      } catch (e) {
        errors++
        console.error(`idle: ${e}`)
      }
    }
  }
  await Promise.all([worker(), worker()])
  const created_s = (now() - t0) / 1000
  await sleep(15000)  // idle: guest page cache settles, moatd samples
  const pss = []
  for (const s of sandboxes) pss.push(await pssMiB(s.sandboxId))
  const hostAvailable = Number((await import('node:fs')).readFileSync('/proc/meminfo', 'utf8').match(/MemAvailable:\s+(\d+)/)[1]) / 1024
  for (const s of sandboxes) {
    ids.push(s.sandboxId)
    await s.kill()
  }
  Object.assign(out, {
    idle: sandboxes.length, errors, created_s: Math.round(created_s * 10) / 10,
    pss_mib: stats(pss), host_mem_available_mib_at_idle: Math.round(hostAvailable),
  })
} else {
  throw new Error(`SDK_BENCH_PHASE: unknown phase ${phase}`)
}
out.ids = ids
console.log(JSON.stringify(out))
