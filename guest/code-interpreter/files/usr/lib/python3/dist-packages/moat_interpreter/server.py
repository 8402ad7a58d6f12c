"""moat's code-interpreter server: the HTTP API of E2B's interpreter on port 49999.

Routes (shared/E2B-CODE-INTERPRETER.md §2): GET /health, POST /execute (an NDJSON stream),
POST and GET /contexts, POST /contexts/{id}/restart, DELETE /contexts/{id}.

A context is one Jupyter kernel, driven directly over ZMQ with Debian's jupyter_client
(messaging protocol 5.3): ipykernel for Python, and moat's own wrapper kernels for JavaScript
(node) and Bash. Runs in one context are serialized by a lock; contexts run in parallel. A client
that goes away interrupts its run (SIGINT to the kernel); a kernel that does not come back to
idle within a bound is restarted, so the next run is never stuck behind the lock.

The sandbox's create-time env vars come from moat-guest, which writes them to /run/moat/env.json
whenever a sandbox gets its identity; each run applies changes to them before the code, and a
run's own env_vars are set for that run only and restored after it.

It runs as root (as E2B's does), started by the code-interpreter-v1 template's start command;
docs/code-interpreter.md.
"""

import asyncio
import json
import logging
import os
import pwd
import sys
import time
import uuid

import tornado.httpserver
import tornado.iostream
import tornado.web
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from .ndjson import encode_line
from .wire import (
    ENV_NAME,
    KERNELS,
    env_restore_code,
    env_save_code,
    env_set_code,
    error_line,
    failure_line,
    iso,
    normalize_language,
    result_line,
)

PORT = int(os.environ.get("MOAT_INTERPRETER_PORT", "49999"))
DEFAULT_CWD = "/home/user"
ENV_FILE = os.environ.get("MOAT_INTERPRETER_ENV_FILE", "/run/moat/env.json")
KEEPALIVE_S = 4.0  # a line at least this often, so that a silent run keeps its connection
INTERRUPT_GRACE_S = 10.0  # after an interrupt, how long a kernel may take back to idle
KERNEL_START_TIMEOUT_S = 300.0  # TCG: the first Python kernel imports numpy and pandas
MAX_BODY = 64 << 20

log = logging.getLogger("moat-interpreter")


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def installed_languages():
    specs = KernelSpecManager().find_kernel_specs()
    return [lang for lang, kernel in KERNELS.items() if kernel in specs]


_env_cache = (None, {})  # (the file's identity when read, what it held)


def read_sandbox_env():
    """The sandbox's create-time env vars (moat-guest writes them at each identity). Parsed
    again only when the file was replaced: this runs before every run."""
    global _env_cache
    try:
        st = os.stat(ENV_FILE)
    except FileNotFoundError:
        return {}
    except OSError as e:
        log.warning("reading %s: %s", ENV_FILE, e)
        return {}
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    if _env_cache[0] == ident:
        return _env_cache[1]
    try:
        with open(ENV_FILE, encoding="utf-8") as f:
            env = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("reading %s: %s", ENV_FILE, e)
        return {}
    if not isinstance(env, dict):
        env = {}
    env = {k: v for k, v in env.items() if isinstance(v, str) and ENV_NAME.match(k)}
    _env_cache = (ident, env)
    return env


def kernel_env(preload):
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PAGER": "cat",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "MPLCONFIGDIR": "/root/.config/matplotlib",
        "NODE_PATH": "/usr/local/lib/node_modules:/usr/lib/node_modules",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    if preload:
        env["MOAT_INTERPRETER_PRELOAD"] = "1"
    return env


class Sink:
    """Where a run's lines go: the HTTP response, until the client goes away. While it is open,
    a keepalive line goes out after every KEEPALIVE_S without one (also while the run waits for
    its context, a kernel start or a restart), which also makes a vanished client visible."""

    def __init__(self, handler):
        self.handler = handler
        self.gone = False
        self.wake = None  # a queue to poke when the client goes away
        self.last_sent = time.monotonic()
        self._keepalive = None

    def client_gone(self):
        if not self.gone:
            self.gone = True
            if self.wake is not None:
                self.wake.put_nowait(("gone", None))

    def start_keepalive(self):
        self._keepalive = asyncio.ensure_future(self._keepalive_loop())

    def stop(self):
        if self._keepalive is not None:
            self._keepalive.cancel()

    async def _keepalive_loop(self):
        while not self.gone:
            await asyncio.sleep(0.5)
            if time.monotonic() - self.last_sent >= KEEPALIVE_S:
                await self.send({"type": "keepalive"})

    async def send(self, obj):
        if self.gone:
            return
        self.last_sent = time.monotonic()
        try:
            # write() buffers the whole line at once: lines from the keepalive task and the run
            # never interleave.
            self.handler.write(encode_line(obj))
            await self.handler.flush()
        except tornado.iostream.StreamClosedError:
            self.client_gone()


# How a run ended (Context.run).
IDLE, RESTARTED, REMOVED, DIED = "idle", "restarted", "removed", "died"
SILENT_RUN_S = 60.0  # the server's own silent code (env vars) is interrupted past this


class Context:
    """One kernel: a language, a working directory, its own namespace.

    `lock` serializes runs (the caller holds it around a run). `admin` serializes restart and
    shutdown; `ready` is clear while the kernel is being (re)started, and runs wait for it;
    `generation` counts restarts, so that what a run learned about an earlier kernel (its env)
    is not taken for the new one's."""

    def __init__(self, language, cwd, preload=False):
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.preload = preload
        self.lock = asyncio.Lock()
        self.admin = asyncio.Lock()
        self.ready = asyncio.Event()
        self.generation = 0
        self.broken = None  # why the kernel could not be restarted
        self.km = None
        self.kc = None
        self.readers = []
        self.runs = {}  # msg_id -> asyncio.Queue of (kind, message)
        self.applied_env = {}
        self.closed = False

    def to_json(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def start(self):
        self.km = AsyncKernelManager(kernel_name=KERNELS[self.language], kernel_id=self.id)
        self.km.shutdown_wait_time = 3.0  # a kernel that ignores shutdown_request is killed
        await self.km.start_kernel(cwd=self.cwd, env=kernel_env(self.preload))
        await self._connect()

    async def _connect(self):
        kc = self.km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)
        except Exception:
            kc.stop_channels()
            raise
        self.kc = kc
        self.applied_env = {}
        self.readers = [
            asyncio.ensure_future(self._read(kc.get_iopub_msg, "iopub")),
            asyncio.ensure_future(self._read(kc.get_shell_msg, "shell")),
        ]
        self.ready.set()

    async def _disconnect(self):
        for r in self.readers:
            r.cancel()
        for r in self.readers:
            try:
                await r
            except BaseException:  # noqa: BLE001 - cancelled or already failed
                pass
        self.readers = []
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None

    async def _read(self, get, kind):
        while True:
            try:
                msg = await get()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a bad message must not stop the reader
                log.warning("context %s: reading %s: %r", self.id, kind, e)
                await asyncio.sleep(0.05)
                continue
            parent = (msg.get("parent_header") or {}).get("msg_id")
            queue = self.runs.get(parent)
            if queue is not None:
                queue.put_nowait((kind, msg))

    def _end_runs(self, kind):
        for queue in list(self.runs.values()):
            queue.put_nowait((kind, None))

    async def wait_ready(self):
        await self.ready.wait()
        if self.closed:
            raise RuntimeError("the context was removed")
        if self.broken:
            raise RuntimeError(self.broken)

    async def restart(self, now=False):
        """A fresh kernel with the same id, language and cwd. Runs in flight end with
        UnexpectedEndOfExecution; runs waiting for the context start on the new kernel."""
        async with self.admin:
            if self.closed:
                self.ready.set()
                return
            self.generation += 1
            self.ready.clear()
            self._end_runs(RESTARTED)
            await self._disconnect()
            try:
                await self.km.restart_kernel(now=now)
                await self._connect()
                self.broken = None
            except Exception as e:
                self.broken = "the kernel could not be restarted: %s" % e
                self.ready.set()  # waiting runs fail rather than wait forever
                raise

    def restart_soon(self, why):
        if not self.closed:
            self.ready.clear()  # the next run waits for the new kernel, not the old one

        async def go():
            log.warning("context %s: %s: restarting its kernel", self.id, why)
            try:
                await self.restart(now=True)
            except Exception:  # noqa: BLE001
                log.exception("context %s: restart failed", self.id)

        asyncio.ensure_future(go())

    async def shutdown(self):
        async with self.admin:
            self.closed = True
            self.generation += 1
            self._end_runs(REMOVED)
            self.ready.set()
            await self._disconnect()
            try:
                await self.km.shutdown_kernel(now=False)
            except Exception as e:  # noqa: BLE001
                log.warning("context %s: shutdown: %r", self.id, e)

    async def run(self, code, sink, silent=False):
        """Runs `code`, sending its lines to `sink` (nothing when silent or None). Returns how it
        ended: IDLE (the kernel is idle again), RESTARTED or REMOVED (the context was, meanwhile),
        DIED (the kernel died; a restart is under way). A client that goes away interrupts the
        kernel; so does a silent run past SILENT_RUN_S. A kernel not idle INTERRUPT_GRACE_S
        after an interrupt is restarted."""
        await self.wait_ready()
        queue = asyncio.Queue()
        msg_id = self.kc.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=True
        )
        self.runs[msg_id] = queue
        if sink is not None:
            sink.wake = queue
        error_sent = False
        started = time.monotonic()
        interrupted_at = None
        try:
            while True:
                gone = sink is not None and sink.gone
                overdue = silent and time.monotonic() - started > SILENT_RUN_S
                if (gone or overdue) and interrupted_at is None:
                    # Stop the code, and keep the context until the kernel is idle again.
                    interrupted_at = time.monotonic()
                    log.info("context %s: %s: interrupting", self.id,
                             "client gone" if gone else "silent run overdue")
                    await self.km.interrupt_kernel()
                try:
                    kind, msg = await asyncio.wait_for(queue.get(), 2.0)
                except asyncio.TimeoutError:
                    if interrupted_at is not None and (
                            time.monotonic() - interrupted_at > INTERRUPT_GRACE_S):
                        self.restart_soon("not idle %ss after an interrupt" % INTERRUPT_GRACE_S)
                        return RESTARTED
                    if not await self.km.is_alive():
                        await self._send(sink, silent, failure_line(
                            "ContextRestarting", "The kernel died; the context is being restarted"))
                        self.restart_soon("the kernel died")
                        return DIED
                    continue
                if kind == "gone":
                    continue
                if kind in (RESTARTED, REMOVED):
                    await self._send(sink, silent, failure_line(
                        "UnexpectedEndOfExecution",
                        "The context was %s before the execution was finished" % kind))
                    return kind
                mtype = msg["header"]["msg_type"]
                content = msg.get("content") or {}
                if kind == "shell":
                    if mtype == "execute_reply":
                        status = content.get("status")
                        if status == "error" and not error_sent:
                            error_sent = True
                            await self._send(sink, silent, error_line(content))
                        elif status == "aborted":
                            await self._send(
                                sink, silent, failure_line("ExecutionAborted", "Execution was aborted"))
                    continue
                if mtype == "status":
                    if content.get("execution_state") == "idle":
                        return IDLE
                elif mtype == "execute_input":
                    await self._send(sink, silent, {
                        "type": "number_of_executions",
                        "execution_count": content.get("execution_count"),
                    })
                elif mtype == "stream":
                    name = content.get("name")
                    if name in ("stdout", "stderr"):
                        await self._send(sink, silent, {
                            "type": name,
                            "text": content.get("text", ""),
                            "timestamp": iso(msg["header"].get("date")),
                        })
                elif mtype in ("display_data", "execute_result"):
                    await self._send(
                        sink, silent, result_line(content.get("data"), mtype == "execute_result")
                    )
                elif mtype == "error":
                    if not error_sent:
                        error_sent = True
                        await self._send(sink, silent, error_line(content))
        finally:
            self.runs.pop(msg_id, None)
            if sink is not None:
                sink.wake = None

    @staticmethod
    async def _send(sink, silent, obj):
        if sink is not None and not silent:
            await sink.send(obj)

    async def apply_env(self):
        """Brings the kernel's env in step with the sandbox's create-time env vars."""
        want = read_sandbox_env()
        if want == self.applied_env:
            return
        generation = self.generation
        change = {k: v for k, v in want.items() if self.applied_env.get(k) != v}
        change.update({k: None for k in self.applied_env if k not in want})
        code = env_set_code(self.language, change)
        if code and await self.run(code, None, silent=True) != IDLE:
            return
        if self.generation == generation:  # else a new kernel has none of it
            self.applied_env = want


def make_cwd(cwd):
    """Creates a missing cwd; what is created under the user's home is the user's, so that
    `commands.run` (as `user`) can write where the code runs."""
    missing = []
    path = os.path.normpath(cwd)
    while path != "/" and not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    os.makedirs(cwd, exist_ok=True)
    try:
        user = pwd.getpwnam("user")
    except KeyError:
        return
    for p in missing:
        if p == user.pw_dir or p.startswith(user.pw_dir + "/"):
            os.chown(p, user.pw_uid, user.pw_gid)


class Registry:
    def __init__(self):
        self.contexts = {}
        self.defaults = {}  # language -> its default context's id
        self.starting = {}  # language -> future of its default context
        self.ready = False
        self.languages = installed_languages()

    def check_language(self, language):
        if language not in self.languages:
            raise HttpError(
                400,
                "Language '%s' is not installed in this sandbox (installed: %s)"
                % (language, ", ".join(self.languages)),
            )

    async def create(self, language, cwd, preload=False):
        self.check_language(language)
        try:
            make_cwd(cwd)
        except OSError as e:
            raise HttpError(400, "cwd %s: %s" % (cwd, e.strerror))
        ctx = Context(language, cwd, preload=preload)
        try:
            await ctx.start()
        except Exception as e:  # noqa: BLE001
            log.exception("starting a %s kernel", language)
            why = str(e)
            process = getattr(getattr(ctx.km, "provisioner", None), "process", None)
            code = process.poll() if process is not None else None
            if code is not None and code < 0:
                why += " (it was killed by signal %d)" % -code
            elif code is not None:
                why += " (it exited with status %d)" % code
            try:
                await ctx.km.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001
                pass
            raise HttpError(500, "Failed to start the %s kernel: %s" % (language, why))
        self.contexts[ctx.id] = ctx
        log.info("context %s: %s in %s", ctx.id, language, cwd)
        return ctx

    async def default(self, language):
        self.check_language(language)
        ctx_id = self.defaults.get(language)
        if ctx_id in self.contexts:
            return self.contexts[ctx_id]
        fut = self.starting.get(language)
        if fut is None:
            fut = asyncio.ensure_future(self.create(language, DEFAULT_CWD, preload=language == "python"))
            self.starting[language] = fut
            try:
                ctx = await fut
                self.defaults[language] = ctx.id
                return ctx
            finally:
                self.starting.pop(language, None)
        return await asyncio.shield(fut)

    def get(self, ctx_id):
        ctx = self.contexts.get(ctx_id)
        if ctx is None:
            raise HttpError(404, "Context %s not found" % ctx_id)
        return ctx

    async def remove(self, ctx_id):
        ctx = self.get(ctx_id)
        del self.contexts[ctx_id]
        for lang, default_id in list(self.defaults.items()):
            if default_id == ctx_id:
                del self.defaults[lang]
        await ctx.shutdown()


class Handler(tornado.web.RequestHandler):
    def initialize(self, registry):
        self.registry = registry

    def set_default_headers(self):
        self.clear_header("Content-Type")

    def check_xsrf_cookie(self):
        pass

    def fail(self, status, message):
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)

    def send_json(self, value):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, ensure_ascii=True))

    def body_json(self):
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as e:
            raise HttpError(400, "The request body is not valid JSON: %s" % e)
        if not isinstance(body, dict):
            raise HttpError(400, "The request body must be a JSON object")
        return body

    def write_error(self, status_code, **kwargs):
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self._reason)

    async def _guard(self, fn):
        try:
            await fn()
        except HttpError as e:
            if not self._finished:
                self.fail(e.status, e.message)


class HealthHandler(Handler):
    def get(self):
        if not self.registry.ready:
            self.fail(503, "starting")
            return
        self.send_json("OK")


class ContextsHandler(Handler):
    async def post(self):
        async def go():
            body = self.body_json()
            language = normalize_language(string_field(body, "language"))
            cwd = string_field(body, "cwd") or DEFAULT_CWD
            if not cwd.startswith("/"):
                raise HttpError(400, "cwd must be an absolute path, not '%s'" % cwd)
            ctx = await self.registry.create(language, cwd)
            self.send_json(ctx.to_json())

        await self._guard(go)

    def get(self):
        self.send_json([c.to_json() for c in self.registry.contexts.values()])


class ContextRestartHandler(Handler):
    async def post(self, ctx_id):
        async def go():
            ctx = self.registry.get(ctx_id)
            try:
                await ctx.restart()
            except Exception as e:  # noqa: BLE001
                log.exception("restarting context %s", ctx_id)
                raise HttpError(500, "Failed to restart context %s: %s" % (ctx_id, e))
            self.send_json(None)

        await self._guard(go)


class ContextHandler(Handler):
    async def delete(self, ctx_id):
        async def go():
            await self.registry.remove(ctx_id)
            self.send_json(None)

        await self._guard(go)


def string_field(body, name):
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HttpError(400, "Field '%s' must be a string" % name)
    return value


class ExecuteHandler(Handler):
    sink = None

    def on_connection_close(self):
        if self.sink is not None:
            self.sink.client_gone()

    async def post(self):
        async def go():
            body = self.body_json()
            code = body.get("code")
            if not isinstance(code, str):
                raise HttpError(400, "Field 'code' is required and must be a string")
            ctx_id = string_field(body, "context_id")
            language = string_field(body, "language")
            if ctx_id and language:
                raise HttpError(400, "Only one of context_id and language may be given")
            env = body.get("env_vars") or {}
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
                raise HttpError(400, "Field 'env_vars' must be an object of strings")
            for k in env:
                if not ENV_NAME.match(k):
                    raise HttpError(400, "Invalid environment variable name '%s'" % k)
            ctx = None
            if ctx_id:
                ctx = self.registry.get(ctx_id)
            else:
                language = normalize_language(language)
                self.registry.check_language(language)
            await self.stream(ctx, language, code, env)

        await self._guard(go)

    async def stream(self, ctx, language, code, env):
        sink = self.sink = Sink(self)
        self.set_status(200)
        self.set_header("Content-Type", "application/x-ndjson")
        try:
            await self.flush()  # headers now, even while queued behind another run
        except tornado.iostream.StreamClosedError:
            return
        sink.start_keepalive()
        try:
            if ctx is None:
                try:
                    ctx = await self.registry.default(language)  # may start its kernel
                except HttpError as e:
                    await sink.send(failure_line("ContextError", e.message))
                    return
            await self.run_in(ctx, code, env, sink)
        finally:
            sink.stop()
            if not sink.gone:
                self.finish()

    async def run_in(self, ctx, code, env, sink):
        # Wait for the context (the keepalive task speaks meanwhile).
        acquire = asyncio.ensure_future(ctx.lock.acquire())
        while not acquire.done():
            await asyncio.wait({acquire}, timeout=1.0)
            if not acquire.done() and sink.gone:
                acquire.cancel()
                try:
                    await acquire
                except asyncio.CancelledError:
                    return
                ctx.lock.release()
                return
        try:
            if ctx.closed:
                await sink.send(failure_line("UnexpectedEndOfExecution", "The context was removed"))
                return
            await ctx.apply_env()
            if env and not sink.gone:
                status = await ctx.run(
                    env_save_code(ctx.language, env.keys()) + env_set_code(ctx.language, env),
                    None, silent=True)
                if status != IDLE:
                    raise RuntimeError("setting the run's env vars failed (%s)" % status)
            if sink.gone:
                status = IDLE  # nothing of the user's ran
            else:
                status = await ctx.run(code, sink)
            if env and status == IDLE and not ctx.closed:
                await ctx.run(env_restore_code(ctx.language, env.keys()), None, silent=True)
            if status == IDLE:
                await sink.send({"type": "end_of_execution"})
        except Exception as e:  # noqa: BLE001 - the stream has started: report in it
            log.exception("context %s: run failed", ctx.id)
            await sink.send(failure_line(
                "UnexpectedEndOfExecution", "The run failed in the interpreter: %s" % e))
        finally:
            ctx.lock.release()


def make_app(registry):
    args = {"registry": registry}
    return tornado.web.Application(
        [
            (r"/health", HealthHandler, args),
            (r"/execute", ExecuteHandler, args),
            (r"/contexts", ContextsHandler, args),
            (r"/contexts/([^/]+)/restart", ContextRestartHandler, args),
            (r"/contexts/([^/]+)", ContextHandler, args),
        ],
        xsrf_cookies=False,
        compress_response=False,
    )


async def main():
    registry = Registry()
    server = tornado.httpserver.HTTPServer(
        make_app(registry), max_body_size=MAX_BODY, idle_connection_timeout=640
    )
    server.listen(PORT, address="0.0.0.0")
    log.info("listening on %d; languages: %s", PORT, ", ".join(registry.languages))
    started = time.monotonic()
    await registry.default("python")
    registry.ready = True
    log.info("ready in %.1f s", time.monotonic() - started)
    await asyncio.Event().wait()


def run(argv):
    """`python3 -m moat_interpreter.server [--log FILE]`: with --log, the server and every
    kernel it starts write to FILE (the start command's own output is gone once the template's
    snapshot is taken); a failure to start is also told on the original stderr."""
    original_stderr = None
    if len(argv) == 2 and argv[0] == "--log":
        fd = os.open(argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        original_stderr = os.fdopen(os.dup(2), "w")
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
    elif argv:
        print("usage: python3 -m moat_interpreter.server [--log FILE]", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001 - told where the start command can see it
        if original_stderr is not None:
            # What the kernels said (the log before this exception), then the exception.
            sys.stderr.flush()
            try:
                with open(argv[1], "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 3000))
                    tail = f.read().decode("utf-8", "replace")
            except OSError:
                tail = ""
            print("moat-interpreter: %s: %s\nlast lines of %s:\n%s"
                  % (type(e).__name__, e, argv[1], tail), file=original_stderr)
            original_stderr.flush()
        log.exception("the interpreter server stopped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
