"""moat's bash kernel: one interactive bash on a pseudo-terminal per context.

bash runs with job control and without line editing; the kernel turns the terminal's echo and
output translation off, and sets a prompt that carries a random marker and the last exit status.
A cell is written to a file and sourced, so variables, functions and `cd` persist; the cell is
over when the prompt comes back. Output is everything the terminal shows, sent as stdout (as
Jupyter's bash kernels do: one terminal has one stream). An interrupt is a ^C on the terminal,
which stops the foreground job and the cell, as at a terminal. A cell that exits non-zero ends
with an `error` naming the status. docs/code-interpreter.md "Kernels".
"""

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import tempfile
import termios
import uuid

from ipykernel.kernelapp import IPKernelApp

from .wrapper import ChildExited, WrapperKernel, die_with_parent


class BashKernel(WrapperKernel):
    implementation = "moat-bash"
    language = "bash"
    language_version = "5"
    banner = "moat bash kernel"
    language_info = {
        "name": "bash",
        "mimetype": "text/x-sh",
        "file_extension": ".sh",
        "codemirror_mode": "shell",
    }

    def start_child(self):
        self.marker = uuid.uuid4().hex
        self.prompt = re.compile(r"<moat:%s:(\d+)>" % self.marker)
        self.cell_dir = tempfile.mkdtemp(prefix="moat-bash-")
        self.cell_path = os.path.join(self.cell_dir, "cell")
        env = dict(os.environ)
        env.update({"PS1": "<moat:%s:$?>" % self.marker, "PS2": "", "PROMPT_COMMAND": "",
                    "HISTFILE": "/dev/null", "TERM": "dumb", "PAGER": "cat"})
        pid, fd = pty.fork()
        if pid == 0:
            try:
                die_with_parent()
                attrs = termios.tcgetattr(0)
                attrs[1] &= ~termios.OPOST  # no \n -> \r\n
                attrs[3] &= ~(termios.ECHO | termios.ECHONL)
                termios.tcsetattr(0, termios.TCSANOW, attrs)
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
                os.execvpe("bash", ["bash", "--noprofile", "--norc", "--noediting", "-i"], env)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.pending = ""
        self.started = False
        # Read up to the first prompt (bash's start-up lines are dropped).
        while True:
            for _, text in self._read_once(30.0):
                self.pending += text
            if self.prompt.search(self.pending):
                self.pending = ""
                break

    def poll_fds(self):
        return {self.fd: "stdout"}

    def send_cell(self, code, silent):
        # (Re)made each time: a cell may have emptied /tmp.
        os.makedirs(self.cell_dir, mode=0o700, exist_ok=True)
        with open(self.cell_path, "w", encoding="utf-8") as f:
            f.write(code)
            if not code.endswith("\n"):
                f.write("\n")
        self.pending = ""
        try:
            os.write(self.fd, (". %s\n" % self.cell_path).encode())
        except OSError as e:
            raise ChildExited() from e

    def on_output(self, name, text, silent):
        self.pending += text
        m = self.prompt.search(self.pending)
        if m is None:
            # Send all but a tail that could be the start of the prompt.
            cut = self.pending.rfind("<moat:")
            if cut == -1 or len(self.pending) - cut > len(self.marker) + 20:
                cut = len(self.pending)
            self.stream("stdout", self.pending[:cut], silent)
            self.pending = self.pending[cut:]
            return None
        self.stream("stdout", self.pending[: m.start()], silent)
        self.pending = ""
        status = int(m.group(1))
        if status == 0:
            return self.ok()
        if status == 130:
            return self.publish_error("KeyboardInterrupt", "interrupted", ["KeyboardInterrupt"],
                                      silent)
        return self.publish_error("CommandExitError", "exit status %d" % status,
                                  ["the last command exited with status %d" % status], silent)

    def interrupt_child(self):
        try:
            os.write(self.fd, b"\x03")
        except OSError:
            pass

    def child_alive(self):
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def stop_child(self):
        try:
            os.kill(self.pid, signal.SIGHUP)
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        subprocess.run(["rm", "-rf", self.cell_dir], check=False)

    def _restart_after_exit(self, silent):
        self.stop_child()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        return super()._restart_after_exit(silent)


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=BashKernel)
