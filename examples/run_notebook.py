"""Run a notebook in a real Jupyter kernel and print what each cell showed (text form).

    python examples/run_notebook.py examples/quickstart.ipynb

Cells tagged `raises-exception` may fail (they show error cards on purpose).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: str | Path, timeout: int = 600) -> nbformat.NotebookNode:
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    # The kernel listens on 127.0.0.1 only; ipykernel's warning about unencrypted TCP would
    # open every run's output, so its application log shows errors only.
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    client.execute()
    return notebook


def cell_text(cell) -> str:
    """The text a reader sees under a code cell: streams, text/plain, errors."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            text = out.get("data", {}).get("text/plain", "")
            if text:
                parts.append(text if text.endswith("\n") else text + "\n")
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback) + "\n")
    return "".join(parts)


def main(argv: list[str]) -> int:
    notebook = run(argv[1] if len(argv) > 1 else Path(__file__).with_name("quickstart.ipynb"))
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        print("In: " + cell.source.replace("\n", "\n    "))
        text = cell_text(cell)
        if text.strip():
            print(text.rstrip("\n"))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
