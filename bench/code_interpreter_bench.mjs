// The code interpreter's benchmark (issue 16), through the official @e2b/code-interpreter client
// as an agent uses it, against the moatd that code_interpreter_bench.sh started. Side by side in
// one run: create -> first runCode('1+1') result; a warm cell's round trip vs
// commands.run('python3 -c ...') in the same sandbox; PSS of an idle interpreter sandbox vs an
// idle base sandbox (the host's PSS of the sandbox's VM, as moatd's /sandboxes/{id}/metrics
// reports it in memUsed). Prints one JSON object.
import { pathToFileURL } from 'node:url'

const { Sandbox } = await import(pathToFileURL(process.env.CI_CLIENT).href)
const N = Number(process.env.CI_BENCH_N || 10)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const now = () => performance.now()

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  const r = (v) => Math.round(v * 10) / 10
  return { n: s.length, p50: r(q(0.5)), p90: r(q(0.9)), min: r(s[0]), max: r(s[s.length - 1]) }
}

async function pssMiB(sbx) {
  // moatd samples usage every few seconds: the newest sample of an idle sandbox.
  for (let i = 0; i < 100; i++) {
    const res = await fetch(`${process.env.E2B_API_URL}/sandboxes/${sbx.sandboxId}/metrics`, {
      headers: { 'X-API-Key': process.env.E2B_API_KEY },
    })
    const samples = await res.json()
    if (Array.isArray(samples) && samples.length > 0) return samples[samples.length - 1].memUsed / 2 ** 20
    await sleep(200)
  }
  throw new Error(`no metrics for ${sbx.sandboxId}`)
}

const out = { client: '@e2b/code-interpreter', iterations: N }

// 1. create -> first runCode('1+1'): every create of the template (the warm pool fills as it
// is used, as for any template).
{
  const create = []
  const first = []
  const total = []
  for (let i = 0; i < N; i++) {
    const t0 = now()
    const sbx = await Sandbox.create({ requestTimeoutMs: 300_000 })
    const t1 = now()
    const ex = await sbx.runCode('1+1')
    const t2 = now()
    if (ex.text !== '2') throw new Error(`runCode('1+1') gave ${JSON.stringify(ex.toJSON?.() ?? ex)}`)
    create.push(t1 - t0)
    first.push(t2 - t1)
    total.push(t2 - t0)
    await sbx.kill()
  }
  out.create_ms = stats(create)
  out.first_run_code_ms = stats(first)
  out.create_to_first_result_ms = stats(total)
}

// 2. a warm cell vs a fresh python3 process, alternating, in one sandbox.
{
  const sbx = await Sandbox.create()
  for (let i = 0; i < 3; i++) {
    await sbx.runCode('1+1')
    await sbx.commands.run('python3 -c "print(1+1)"')
  }
  const cell = []
  const proc = []
  for (let i = 0; i < 2 * N; i++) {
    let t = now()
    const ex = await sbx.runCode('1+1')
    cell.push(now() - t)
    if (ex.text !== '2') throw new Error('bad cell result')
    t = now()
    const r = await sbx.commands.run('python3 -c "print(1+1)"')
    proc.push(now() - t)
    if (r.stdout.trim() !== '2') throw new Error('bad python3 output')
  }
  out.warm_cell_ms = stats(cell)
  out.python3_process_ms = stats(proc)
  out.warm_cell_over_python3 = Math.round((out.warm_cell_ms.p50 / out.python3_process_ms.p50) * 1000) / 1000
  out.warm_cell_target = '<= 0.2 of a fresh python3 process'
  await sbx.kill()
}

// 3. PSS of idle sandboxes: interpreter (after one run) vs base.
{
  const K = 3
  const ci = []
  const base = []
  for (let i = 0; i < K; i++) {
    const a = await Sandbox.create()
    await a.runCode('1+1')
    ci.push(a)
    base.push(await Sandbox.create('base'))
  }
  await sleep(5000)
  const ciPss = []
  const basePss = []
  for (const s of ci) ciPss.push(await pssMiB(s))
  for (const s of base) basePss.push(await pssMiB(s))
  out.idle_pss_mib = { code_interpreter: stats(ciPss), base: stats(basePss) }
  out.idle_pss_ratio = Math.round((out.idle_pss_mib.code_interpreter.p50 / out.idle_pss_mib.base.p50) * 100) / 100
  await Promise.all([...ci, ...base].map((s) => s.kill()))
}

console.log(JSON.stringify(out, null, 2))
