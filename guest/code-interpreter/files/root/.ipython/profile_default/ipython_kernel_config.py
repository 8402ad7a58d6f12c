# moat's code interpreter (docs/code-interpreter.md): tracebacks without ANSI colours, sequences
# printed whole, and no history file (every context is a fresh namespace).
c = get_config()  # noqa: F821
c.InteractiveShell.colors = "NoColor"
c.PlainTextFormatter.max_seq_length = 0
c.HistoryManager.enabled = False
