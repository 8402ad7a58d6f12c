// The Node.js side of moat's JavaScript kernel (js_kernel.py): reads one JSON request a line on
// stdin ({id, code, n}), runs the code in node's main context, and answers on the control fd
// ({id, result} with util.inspect of the value, or {id, error: {ename, evalue, traceback}}).
// User output goes to the real stdout/stderr, which node writes synchronously to pipes, so it
// is in the pipes before the answer.
'use strict';

const fs = require('fs');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { createRequire } = require('module');
const readline = require('readline');

const controlFd = Number(process.env.MOAT_JS_CONTROL_FD || 3);
delete process.env.MOAT_JS_CONTROL_FD;

function reply(obj) {
  fs.writeSync(controlFd, JSON.stringify(obj) + '\n');
}

// `require` for cells: the context's cwd first (its node_modules), then NODE_PATH.
Object.defineProperty(globalThis, 'require', {
  configurable: true,
  writable: true,
  value: createRequire(path.join(process.cwd(), '[cell]')),
});

let interrupt = null; // rejects the pending promise of the running cell
process.on('SIGINT', () => {
  if (interrupt) interrupt(new Error('Script execution was interrupted by `SIGINT`'));
});

// A stack without the driver's own frames (everything from the vm call that ran the cell on).
function cellFrames(stack) {
  const lines = stack.split('\n');
  const end = lines.findIndex((l) => /sigintHandlersWrap|node:vm:|js_driver\.js/.test(l));
  return end > 0 ? lines.slice(0, end) : lines;
}

function errorOf(e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'stack' in e)) {
    const name = e.name || 'Error';
    return {
      ename: name,
      evalue: String(e.message ?? ''),
      traceback: cellFrames(String(e.stack || `${name}: ${e.message}`)),
    };
  }
  return { ename: 'Error', evalue: util.inspect(e), traceback: [`Uncaught ${util.inspect(e)}`] };
}

// A cell with a top-level `await` does not compile as a script: it runs as the body of an async
// function instead (its declarations are then the function's own, and its value is what it
// returns).
function compile(req) {
  const filename = `<cell ${req.n}>`;
  try {
    return new vm.Script(req.code, { filename });
  } catch (e) {
    if (!(e instanceof SyntaxError) || !/await is only valid/.test(e.message)) throw e;
    return new vm.Script(`(async () => {\n${req.code}\n})()`, { filename, lineOffset: -1 });
  }
}

async function run(req) {
  const script = compile(req);
  let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (value && typeof value.then === 'function') {
    value = await new Promise((resolve, reject) => {
      interrupt = reject;
      value.then(resolve, reject);
    }).finally(() => {
      interrupt = null;
    });
  }
  return value;
}

// A cell's rejection that nobody awaited must not kill the context: report it on stderr.
process.on('unhandledRejection', (reason) => {
  process.stderr.write(`Unhandled promise rejection: ${util.inspect(reason)}\n`);
});
process.on('uncaughtException', (e) => {
  process.stderr.write(`Uncaught exception: ${e && e.stack ? e.stack : util.inspect(e)}\n`);
});

const queue = [];
let busy = false;
async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const req = queue.shift();
    try {
      const value = await run(req);
      reply({ id: req.id, result: value === undefined ? null : util.inspect(value) });
    } catch (e) {
      reply({ id: req.id, error: errorOf(e) });
    }
  }
  busy = false;
}

readline.createInterface({ input: process.stdin, terminal: false }).on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    return;
  }
  queue.push(req);
  pump();
}).on('close', () => process.exit(0));

reply({ version: process.versions.node });
