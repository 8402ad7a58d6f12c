"""moat's JavaScript kernel: one Node.js process per context (js_driver.js).

Cells run in node's main context with `vm.Script.runInThisContext`, so globals and top-level
`let`/`const`/`class` declarations persist between cells; `require` resolves from the context's
cwd and the global module folders. The cell's value (awaited when it is a promise) is the
`execute_result`, shown by `util.inspect`; a throw is an `error` with the stack. console output
is streamed as stdout/stderr while the cell runs. Control messages travel on fd 3, apart from
the output. An interrupt is SIGINT to node: synchronous code is stopped by `breakOnSigint`, and
a pending promise is abandoned. docs/code-interpreter.md "Kernels".
"""

import json
import os
import subprocess

from ipykernel.kernelapp import IPKernelApp

from .wrapper import ChildExited, WrapperKernel, die_with_parent

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js_driver.js")


class JavaScriptKernel(WrapperKernel):
    implementation = "moat-javascript"
    language = "javascript"
    banner = "moat JavaScript kernel (Node.js)"
    language_info = {
        "name": "javascript",
        "mimetype": "application/javascript",
        "file_extension": ".js",
    }

    @property
    def language_version(self):
        return self._version

    def start_child(self):
        ctl_r, ctl_w = os.pipe()
        self.node = subprocess.Popen(
            ["node", DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(ctl_w,),
            preexec_fn=die_with_parent,
            env=dict(os.environ, MOAT_JS_CONTROL_FD=str(ctl_w)),
        )
        os.close(ctl_w)
        self.ctl = ctl_r
        self.ctl_buf = ""
        self.next_id = 0
        self.current = None
        self._version = ""
        for fd in (self.node.stdout.fileno(), self.node.stderr.fileno(), self.ctl):
            os.set_blocking(fd, False)
        # The driver says hello with its version once it is ready.
        while True:
            for name, text in self._read_once(60.0):
                if name == "control":
                    self.ctl_buf += text
            if "\n" in self.ctl_buf:
                line, _, self.ctl_buf = self.ctl_buf.partition("\n")
                self._version = json.loads(line).get("version", "")
                break

    def poll_fds(self):
        return {
            self.node.stdout.fileno(): "stdout",
            self.node.stderr.fileno(): "stderr",
            self.ctl: "control",
        }

    def send_cell(self, code, silent):
        self.next_id += 1
        self.current = self.next_id
        req = json.dumps({"id": self.current, "code": code, "n": self.execution_count})
        try:
            self.node.stdin.write(req.encode() + b"\n")
            self.node.stdin.flush()
        except OSError as e:
            raise ChildExited() from e

    def on_output(self, name, text, silent):
        if name != "control":
            self.stream(name, text, silent)
            return None
        self.ctl_buf += text
        while "\n" in self.ctl_buf:
            line, _, self.ctl_buf = self.ctl_buf.partition("\n")
            reply = json.loads(line)
            if reply.get("id") != self.current:
                continue
            self._drain(silent)  # output written before the reply is in the pipes already
            if "error" in reply:
                e = reply["error"]
                return self.publish_error(e.get("ename", "Error"), e.get("evalue", ""),
                                          e.get("traceback", []), silent)
            if reply.get("result") is not None and not silent:
                self.send_response(self.iopub_socket, "execute_result", {
                    "execution_count": self.execution_count,
                    "data": {"text/plain": reply["result"]},
                    "metadata": {},
                })
            return self.ok()
        return None

    def _drain(self, silent):
        for fd, name in ((self.node.stdout.fileno(), "stdout"),
                         (self.node.stderr.fileno(), "stderr")):
            while True:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                self.stream(name, self.decode(fd, data), silent)

    def interrupt_child(self):
        # Jupyter signals the kernel's whole process group, node included; signal node only
        # when it is elsewhere.
        try:
            if os.getpgid(self.node.pid) != os.getpgrp():
                self.node.send_signal(2)
        except OSError:
            pass

    def child_alive(self):
        return self.node.poll() is None

    def stop_child(self):
        try:
            self.node.kill()
            self.node.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for fd in (self.ctl,):
            try:
                os.close(fd)
            except OSError:
                pass

    def _restart_after_exit(self, silent):
        self.stop_child()
        return super()._restart_after_exit(silent)


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=JavaScriptKernel)
