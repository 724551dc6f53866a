"""The application on top of the library: the CLI, the demo, evaluation and its report, transfer
tasks, HF commands and serving. The only code that imports ``clustering``, ``experts`` and
``routing`` together; nothing below imports it."""
