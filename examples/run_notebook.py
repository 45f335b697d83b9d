"""Run a notebook in a real Jupyter kernel and print what each cell showed (text form).

    python examples/run_notebook.py examples/quickstart.ipynb

Cells tagged `raises-exception` may fail (they show error cards on purpose).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient
from nbclient import NotebookClient
from traitlets import default


def run(path: str | Path, timeout: int = 600) -> nbformat.NotebookNode:
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = lab_client(
        notebook, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return notebook


def lab_client(notebook: nbformat.NotebookNode, **options) -> NotebookClient:
    """A NotebookClient that sends each cell's id with its execution request, as JupyterLab
    and Notebook 7 do (the request's metadata `cellId`; nbclient itself sends none), so
    the kernel knows which cell runs (`%%llm_chat` replaces a re-run cell's own turn)."""
    # The kernel listens on 127.0.0.1 only; ipykernel's warning about unencrypted TCP would
    # open every run's output, so its application log shows errors only.
    options.setdefault("extra_arguments", ["--IPKernelApp.log_level=ERROR"])
    client = NotebookClient(
        notebook, kernel_name="python3", kernel_manager_class=_LabKernelManager, **options
    )

    def note_cell(cell, cell_index):
        client.kc.cell_id = cell.get("id")

    client.on_cell_execute = note_cell  # called just before each cell's execute request
    return client


class _LabKernelClient(AsyncKernelClient):
    cell_id: str | None = None

    def execute(
        self,
        code,
        silent=False,
        store_history=True,
        user_expressions=None,
        allow_stdin=None,
        stop_on_error=True,
    ):
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions or {},
            "allow_stdin": self.allow_stdin if allow_stdin is None else allow_stdin,
            "stop_on_error": stop_on_error,
        }
        msg = self.session.msg(
            "execute_request", content, metadata={"cellId": self.cell_id} if self.cell_id else None
        )
        self.shell_channel.send(msg)
        return msg["header"]["msg_id"]


class _LabKernelManager(AsyncKernelManager):
    @default("client_factory")
    def _lab_client(self):
        return _LabKernelClient


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
