// The code interpreter (issue 16) through the official @e2b/code-interpreter client, exactly as
// an agent uses it: Sandbox.create() with no template (the client's default,
// code-interpreter-v1), runCode in Python, JavaScript and Bash, rich results, contexts, env vars,
// timeouts and concurrency. Configured only through E2B_API_KEY, E2B_API_URL and
// E2B_SANDBOX_URL (run.sh sets them); the interpreter is reached through moatd's port proxy.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, Template } from '@e2b/code-interpreter'
import { sleep, waitFor } from './support.mjs'

const skip = process.env.MOAT_COMPAT_STORE === 'postgresql'
  ? 'the interpreter does not touch the store: the SQLite run covers it'
  : false

describe('code interpreter (issue 16)', { concurrency: false, skip }, () => {
  let sbx

  before(async () => {
    // moatd bakes the template at start (--prebake-templates); the first create waits for a
    // bake still running.
    sbx = await Sandbox.create({ envs: { CREATE_VAR: 'from-create', SHARED: 'create' }, requestTimeoutMs: 400_000 })
  })
  after(async () => {
    await sbx?.kill().catch(() => {})
  })

  test('state is kept between runs; the main result is the text', async () => {
    let ex = await sbx.runCode('x = 40\nx + 1')
    assert.equal(ex.error, undefined)
    assert.equal(ex.text, '41')
    assert.equal(ex.results.length, 1)
    assert.equal(ex.results[0].isMainResult, true)
    ex = await sbx.runCode('x + 2')
    assert.equal(ex.text, '42')
    assert.ok(ex.executionCount >= 2, `executionCount ${ex.executionCount}`)
  })

  test('stdout streams while the run goes on, non-ASCII intact', async () => {
    const seen = []
    const started = Date.now()
    const ex = await sbx.runCode(
      'import sys, time\nprint("first \u00e9\u2713\u65e5\u672c", flush=True)\ntime.sleep(2)\nprint("second")\nprint("to stderr", file=sys.stderr)',
      { onStdout: (m) => seen.push({ line: m.line, at: Date.now() - started }) },
    )
    const done = Date.now() - started
    assert.equal(ex.error, undefined)
    assert.equal(seen[0].line, 'first \u00e9\u2713\u65e5\u672c\n')
    assert.ok(done - seen[0].at >= 1500, `first line at ${seen[0].at} ms, run done at ${done} ms`)
    assert.deepEqual(ex.logs.stdout, ['first \u00e9\u2713\u65e5\u672c\n', 'second\n'])
    assert.deepEqual(ex.logs.stderr, ['to stderr\n'])
  })

  test('an exception is an error with its name, value and traceback', async () => {
    const ex = await sbx.runCode('1/0')
    assert.equal(ex.error.name, 'ZeroDivisionError')
    assert.equal(ex.error.value, 'division by zero')
    assert.match(ex.error.traceback, /ZeroDivisionError/)
    assert.match(ex.error.traceback, /1\/0/)
    assert.doesNotMatch(ex.error.traceback, /\u001b\[/, 'no ANSI colours')
  })

  test('runs are recorded in the sandbox\'s command history as kind "code"', async () => {
    const ok = await sbx.runCode('print(6*7)')
    assert.equal(ok.error, undefined)
    const failed = await sbx.runCode('1/0')
    assert.equal(failed.error?.name, 'ZeroDivisionError')
    // Newest first; the record is finished when the relay ends, just after the client has read
    // the stream's end.
    let items = []
    await waitFor('both runs finished in the history', async () => {
      const res = await fetch(`${process.env.E2B_API_URL}/history/${sbx.sandboxId}/commands?limit=20`, {
        headers: { 'X-API-Key': process.env.E2B_API_KEY },
      })
      assert.equal(res.status, 200)
      items = (await res.json()).items
      const byCode = (code) => items.find((c) => c.command === code)
      return byCode('print(6*7)')?.endedAt && byCode('1/0')?.endedAt
    })
    const first = items.find((c) => c.command === 'print(6*7)')
    const second = items.find((c) => c.command === '1/0')
    assert.ok(first.id < second.id)
    for (const c of [first, second]) assert.equal(c.kind, 'code')
    assert.match(first.stdout.head, /42/)
    assert.equal(first.exitCode, 0)
    assert.equal(first.error, null)
    assert.match(second.error, /^ZeroDivisionError/)
    assert.equal(second.exitCode, 1)
  })

  test('a matplotlib figure is a PNG and a chart with its numbers', async () => {
    let ex = await sbx.runCode([
      'import matplotlib.pyplot as plt',
      'plt.plot([1, 2, 3], [10, 20, 15], label="sales")',
      'plt.title("Sales"); plt.xlabel("day"); plt.ylabel("revenue (USD)")',
      'plt.show()',
    ].join('\n'))
    assert.equal(ex.error, undefined)
    const fig = ex.results.find((r) => r.png)
    assert.ok(fig, `no png result in ${JSON.stringify(ex.results.map((r) => r.formats()))}`)
    assert.equal(Buffer.from(fig.png, 'base64').subarray(0, 8).toString('hex'), '89504e470d0a1a0a')
    assert.equal(fig.chart.type, 'line')
    assert.equal(fig.chart.title, 'Sales')
    assert.equal(fig.chart.x_label, 'day')
    assert.equal(fig.chart.y_unit, 'USD')
    assert.deepEqual(fig.chart.elements, [{ label: 'sales', points: [[1, 10], [2, 20], [3, 15]] }])

    ex = await sbx.runCode([
      'import matplotlib.pyplot as plt',
      'fig, ax = plt.subplots()',
      'ax.bar(["a", "b", "c"], [3, 5, 2], label="q1")',
      'plt.show()',
    ].join('\n'))
    const bar = ex.results.find((r) => r.chart)?.chart
    assert.equal(bar?.type, 'bar')
    assert.deepEqual(bar.elements.map((e) => [e.label, e.group, e.value]), [['a', 'q1', 3], ['b', 'q1', 5], ['c', 'q1', 2]])

    ex = await sbx.runCode('import matplotlib.pyplot as plt\nplt.pie([1, 3], labels=["x", "y"])\nplt.show()')
    const pie = ex.results.find((r) => r.chart)?.chart
    assert.equal(pie?.type, 'pie')
    assert.deepEqual(pie.elements.map((e) => [e.label, Math.round(e.angle)]), [['x', 90], ['y', 270]])

    ex = await sbx.runCode('import matplotlib.pyplot as plt\nplt.boxplot([[1, 2, 3, 4, 5, 40]], labels=["g"])\nplt.show()')
    const box = ex.results.find((r) => r.chart)?.chart
    assert.equal(box?.type, 'box_and_whisker')
    assert.equal(box.elements[0].label, 'g')
    assert.equal(box.elements[0].median, 3.5)
    assert.deepEqual(box.elements[0].outliers, [40])
  })

  test('a pandas DataFrame is an HTML table with its data', async () => {
    const ex = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", None]})')
    assert.equal(ex.error, undefined)
    const r = ex.results[0]
    assert.match(r.html, /<table[\s\S]*<th>a<\/th>[\s\S]*<td>x<\/td>/)
    assert.deepEqual(r.data, { a: [1, 2], b: ['x', null] })
    const j = await sbx.runCode('{"k": [1, 2.5, None]}')
    assert.deepEqual(j.results[0].json, { k: [1, 2.5, null] })
  })

  test('the sandbox env is visible to code; a run\'s envs apply to that run only', async () => {
    let ex = await sbx.runCode('import os\n(os.environ.get("CREATE_VAR"), os.environ.get("RUN_VAR"), os.environ.get("SHARED"))',
      { envs: { RUN_VAR: 'per-run', SHARED: 'run' } })
    assert.equal(ex.text, "('from-create', 'per-run', 'run')")
    ex = await sbx.runCode('import os\n(os.environ.get("RUN_VAR"), os.environ.get("SHARED"))')
    assert.equal(ex.text, "(None, 'create')")
    ex = await sbx.runCode('process.env.CREATE_VAR + " " + process.env.RUN_VAR', { language: 'js', envs: { RUN_VAR: 'r' } })
    assert.equal(ex.text, 'from-create r') // one pair of wrapping quotes is stripped (E2B's rule)
    ex = await sbx.runCode('echo "$CREATE_VAR/$RUN_VAR"', { language: 'bash', envs: { RUN_VAR: "it's" } })
    assert.deepEqual(ex.logs.stdout, ["from-create/it's\n"])
    ex = await sbx.runCode('echo "[$RUN_VAR]"', { language: 'bash' })
    assert.deepEqual(ex.logs.stdout, ['[]\n'])
  })

  test('JavaScript and Bash contexts keep their state', async () => {
    let ex = await sbx.runCode('let a = 20; console.log("js says", a); a * 2', { language: 'javascript' })
    assert.equal(ex.error, undefined)
    assert.deepEqual(ex.logs.stdout, ['js says 20\n'])
    assert.equal(ex.text, '40')
    ex = await sbx.runCode('a + 1', { language: 'js' })
    assert.equal(ex.text, '21')
    ex = await sbx.runCode('Promise.resolve(7).then((v) => v * 6)', { language: 'js' })
    assert.equal(ex.text, '42')
    ex = await sbx.runCode('null.x', { language: 'js' })
    assert.equal(ex.error.name, 'TypeError')

    ex = await sbx.runCode('cd /tmp && greeting=hello\necho "$greeting from $(pwd)"', { language: 'bash' })
    assert.deepEqual(ex.logs.stdout, ['hello from /tmp\n'])
    ex = await sbx.runCode('echo "$greeting again in $(pwd)"; false', { language: 'bash' })
    assert.deepEqual(ex.logs.stdout, ['hello again in /tmp\n'])
    assert.match(ex.error.value, /1/)
  })

  test('a language that is not installed is a clear error', async () => {
    await assert.rejects(sbx.runCode('1', { language: 'r', requestTimeoutMs: 5000 }), /400/)
    await assert.rejects(sbx.createCodeContext({ language: 'java' }), /400/)
  })

  test('a second context is isolated and has its own cwd', async () => {
    const ctx = await sbx.createCodeContext({ cwd: '/home/user/project' })
    assert.equal(ctx.language, 'python')
    assert.equal(ctx.cwd, '/home/user/project')
    let ex = await sbx.runCode('import os\nos.getcwd()', { context: ctx })
    assert.equal(ex.text, '/home/user/project')
    ex = await sbx.runCode('x', { context: ctx })
    assert.equal(ex.error.name, 'NameError')
    ex = await sbx.runCode('x')
    assert.equal(ex.text, '40')
    const list = await sbx.listCodeContexts()
    assert.ok(list.some((c) => c.id === ctx.id && c.cwd === '/home/user/project'))
    await sbx.removeCodeContext(ctx)
  })

  test('timeoutMs interrupts a run; the context survives and runs the next', async () => {
    await sbx.runCode('survivor = "still here"')
    const started = Date.now()
    await assert.rejects(sbx.runCode('import time\ntime.sleep(60)', { timeoutMs: 3000 }), (e) => e.name === 'TimeoutError')
    assert.ok(Date.now() - started < 10_000)
    const next = Date.now()
    const ex = await sbx.runCode('survivor')
    assert.equal(ex.text, 'still here')
    assert.ok(Date.now() - next < 10_000, `the next run took ${Date.now() - next} ms`)
    // The same for JavaScript (a busy loop) and Bash.
    await assert.rejects(sbx.runCode('while (true) {}', { language: 'js', timeoutMs: 3000 }), (e) => e.name === 'TimeoutError')
    assert.equal((await sbx.runCode('a', { language: 'js' })).text, '20')
    await assert.rejects(sbx.runCode('sleep 60', { language: 'bash', timeoutMs: 3000 }), (e) => e.name === 'TimeoutError')
    assert.deepEqual((await sbx.runCode('echo $greeting', { language: 'bash' })).logs.stdout, ['hello\n'])
  })

  test('a silent run longer than the keepalive interval completes through the proxy', async () => {
    const ex = await sbx.runCode('import time\ntime.sleep(7)\n"awake"')
    assert.equal(ex.text, 'awake')
  })

  test('restart wipes a context\'s state; remove deletes it', async () => {
    const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/tmp' })
    await sbx.runCode('kept = 1', { context: ctx })
    await sbx.restartCodeContext(ctx)
    let ex = await sbx.runCode('kept', { context: ctx })
    assert.equal(ex.error.name, 'NameError')
    ex = await sbx.runCode('import os\nos.getcwd()', { context: ctx })
    assert.equal(ex.text, '/tmp')
    await sbx.removeCodeContext(ctx.id)
    const list = await sbx.listCodeContexts()
    assert.ok(!list.some((c) => c.id === ctx.id))
    // (The client leaves its request timer running when runCode fails on a status: a short one
    // keeps this process from waiting out the connection's 300 s.)
    await assert.rejects(sbx.runCode('1', { context: ctx, requestTimeoutMs: 5000 }), (e) => e.name === 'NotFoundError')
    await assert.rejects(sbx.restartCodeContext(ctx), (e) => e.name === 'NotFoundError')
  })

  test('concurrent runs in separate contexts run in parallel and stay apart', async () => {
    // Three kernels start at once on the sandbox's 2 vCPUs (seconds each under TCG).
    const contexts = await Promise.all([0, 1, 2].map(() => sbx.createCodeContext({ requestTimeoutMs: 180_000 })))
    await Promise.all(contexts.map((c, i) => sbx.runCode(`mine = ${i}`, { context: c })))
    const started = Date.now()
    const results = await Promise.all(
      contexts.map((c, i) => sbx.runCode(`import time\ntime.sleep(3)\n(mine, ${i})`, { context: c })),
    )
    const took = Date.now() - started
    results.forEach((ex, i) => assert.equal(ex.text, `(${i}, ${i})`))
    assert.ok(took < 3 * 3000, `three 3 s runs took ${took} ms: not in parallel`)
    // Runs in one context queue behind each other.
    const [one, two] = await Promise.all([
      sbx.runCode('import time\ntime.sleep(1)\norder = ["first"]\norder', { context: contexts[0] }),
      sleep(500).then(() => sbx.runCode('order.append("second")\norder', { context: contexts[0] })),
    ])
    assert.equal(one.text, "['first']")
    assert.equal(two.text, "['first', 'second']")
    await Promise.all(contexts.map((c) => sbx.removeCodeContext(c)))
  })

  test('a template built from code-interpreter-v1 keeps the interpreter and adds its steps', async () => {
    const name = `ci-child-${process.pid.toString(36)}`
    const t = Template()
      .fromTemplate('code-interpreter-v1')
      .runCmd('echo "from the child template" > /home/user/child-marker.txt')
    await Template.build(t, name, { cpuCount: 2, memoryMB: 1024 })
    const child = await Sandbox.create(name, { requestTimeoutMs: 400_000 })
    try {
      const ex = await child.runCode('open("/home/user/child-marker.txt").read().strip()')
      assert.equal(ex.error, undefined)
      assert.equal(ex.text, 'from the child template')
    } finally {
      await child.kill()
      await fetch(`${process.env.E2B_API_URL}/templates/${encodeURIComponent(name)}`, {
        method: 'DELETE',
        headers: { 'X-API-Key': process.env.E2B_API_KEY },
      }).then((r) => r.text())
    }
  })

  test('with allowPublicTraffic: false the interpreter answers only with the traffic token', async () => {
    const priv = await Sandbox.create({ network: { allowPublicTraffic: false }, requestTimeoutMs: 400_000 })
    try {
      assert.ok(priv.trafficAccessToken, 'the sandbox has a traffic token')
      const ex = await priv.runCode('"private " + str(6 * 7)')
      assert.equal(ex.text, 'private 42')
      const res = await fetch(`${process.env.E2B_SANDBOX_URL}/execute`, {
        method: 'POST',
        headers: { 'E2b-Sandbox-Id': priv.sandboxId, 'E2b-Sandbox-Port': '49999', 'Content-Type': 'application/json' },
        body: JSON.stringify({ code: '1' }),
      })
      await res.text()
      assert.equal(res.status, 403)
    } finally {
      await priv.kill()
    }
  })
})
