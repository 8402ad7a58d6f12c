"""What moat's two wrapper kernels (bash, JavaScript) share: a Jupyter kernel (ipykernel's
`Kernel` base, so the messaging protocol is ipykernel's own) that runs each cell in a long-lived
child process and streams the child's output as it comes.

A subclass starts the child (`start_child`), sends it a cell (`send_cell`), and reads its output
through `poll_fds` / `on_output` until `on_output` reports the cell finished. An interrupt from
Jupyter (SIGINT to the kernel, raised here as KeyboardInterrupt while a cell runs) is passed on
with `interrupt_child`; the cell then ends as the child reports it, so the child and its state
survive. A child that exits is started again and the cell reports it.
"""

import codecs
import ctypes
import os
import select
import signal

from ipykernel.kernelbase import Kernel

PR_SET_PDEATHSIG = 1


def die_with_parent():
    """In a child before exec: SIGKILL when the kernel dies, however it dies; and SIGINT back to
    its default (ipykernel ignores it outside a request, and an ignored signal stays ignored
    across exec: ^C would reach nothing the cell runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class ChildExited(Exception):
    pass


class WrapperKernel(Kernel):
    # Subclasses set implementation, language, language_info, banner.
    implementation_version = "1.0"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.execution_count = 0
        self._decoders = {}
        self.start_child()

    # --- subclass interface -------------------------------------------------------------
    def start_child(self):
        raise NotImplementedError

    def send_cell(self, code, silent):
        raise NotImplementedError

    def poll_fds(self):
        """{fd: stream name} to read while a cell runs; the name is passed to on_output."""
        raise NotImplementedError

    def on_output(self, name, text, silent):
        """Handles output; returns None while the cell runs, else its reply content."""
        raise NotImplementedError

    def interrupt_child(self):
        raise NotImplementedError

    def child_alive(self):
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------
    def stream(self, name, text, silent):
        if text and not silent:
            self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def publish_error(self, ename, evalue, traceback, silent):
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        if not silent:
            self.send_response(self.iopub_socket, "error", content)
        return dict(content, status="error", execution_count=self.execution_count)

    def ok(self):
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": [],
            "user_expressions": {},
        }

    def decode(self, fd, data):
        dec = self._decoders.get(fd)
        if dec is None:
            dec = self._decoders[fd] = codecs.getincrementaldecoder("utf-8")("replace")
        return dec.decode(data)

    def _read_once(self, timeout):
        fds = self.poll_fds()
        ready, _, _ = select.select(list(fds), [], [], timeout)
        out = []
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                raise ChildExited()
            out.append((fds[fd], self.decode(fd, data)))
        return out

    # --- Kernel ---------------------------------------------------------------------------
    def do_execute(
        self, code, silent, store_history=True, user_expressions=None, allow_stdin=False,
        *args, **kwargs
    ):
        # (ipykernel's execute_request counts the execution and publishes execute_input.)
        if not code.strip():
            return self.ok()
        interrupted = False
        try:
            self.send_cell(code, silent)
        except ChildExited:
            return self._restart_after_exit(silent)
        except OSError as e:  # the cell could not be handed over; the child is fine
            return self.publish_error("OSError", str(e), [], silent)
        while True:
            try:
                for name, text in self._read_once(1.0):
                    reply = self.on_output(name, text, silent)
                    if reply is not None:
                        if interrupted and reply.get("status") == "ok":
                            return self.publish_error(
                                "KeyboardInterrupt", "interrupted", ["KeyboardInterrupt"], silent
                            )
                        return reply
                if not self.child_alive():
                    raise ChildExited()
            except KeyboardInterrupt:
                interrupted = True
                self.interrupt_child()
            except ChildExited:
                return self._restart_after_exit(silent)

    def _restart_after_exit(self, silent):
        self._decoders = {}
        self.start_child()
        return self.publish_error(
            "ChildExited",
            "The %s process exited; it was started again (its state is lost)" % self.language,
            [],
            silent,
        )

    def do_shutdown(self, restart):
        self.stop_child()
        return {"status": "ok", "restart": restart}

    def stop_child(self):
        pass
