"""``clinomic-audit-verify``: check an exported audit ledger offline, or measure the ledger's speed.

    clinomic-audit-verify verify LEDGER.jsonl --tree-heads HEADS.jsonl --public-key log.pub.pem \
        [--hmac-key-file keys.json] [--check-content] [--json]
    clinomic-audit-verify verify-proof PROOF.json --public-key log.pub.pem [--screening S.json] [--json]
    clinomic-audit-verify bench --entries 1000000

Exit status of ``verify`` and ``verify-proof``: 0 when everything checks out, 1 when the ledger or the
proof fails verification, 2 when the inputs cannot be read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from audit.verifier import (
    ExportFormatError,
    benchmark,
    load_tree_heads,
    parse_hmac_keys,
    verify_export,
    verify_screening_proof,
)

app = typer.Typer(
    help="Verify an exported Clinomic audit ledger without access to any service or database.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail_input(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@app.command()
def verify(
    ledger: Annotated[Path, typer.Argument(help="Exported ledger (JSON Lines, header first).")],
    tree_heads: Annotated[
        Path | None, typer.Option("--tree-heads", help="Signed tree heads (JSON Lines or a JSON array).")
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option("--public-key", help="Ed25519 public key (PEM) of the tree-head signer; repeatable."),
    ] = None,
    hmac_key_file: Annotated[
        Path | None,
        typer.Option("--hmac-key-file", help='JSON {"key id": "<base64 key>"}: also check every HMAC.'),
    ] = None,
    check_content: Annotated[
        bool, typer.Option("--check-content", help="Also insist that each entry's content is canonical JSON.")
    ] = False,
    require_tree_heads: Annotated[
        bool, typer.Option("--require-tree-heads", help="Fail when no signed tree head was checked.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recompute every entry hash and chain link, rebuild the Merkle tree, check each signed tree head."""
    public_keys: list[bytes] = []
    heads: list[dict] = []
    hmac_keys = None
    try:
        for path in public_key or []:
            public_keys.append(path.read_bytes())
        if tree_heads is not None:
            heads = load_tree_heads(tree_heads.read_text(encoding="utf-8"))
            if heads and not public_keys:
                raise _fail_input("--tree-heads needs --public-key to check the signatures")
        if hmac_key_file is not None:
            hmac_keys = parse_hmac_keys(hmac_key_file.read_text(encoding="utf-8"))
        report = verify_export(
            ledger,
            tree_heads=heads,
            public_keys=public_keys,
            hmac_keys=hmac_keys,
            check_content=check_content,
        )
    except typer.Exit:
        raise
    except (OSError, ExportFormatError, ValueError) as exc:
        raise _fail_input(str(exc)) from None
    ok = report.ok
    if require_tree_heads and not any(h.ok for h in report.tree_heads):
        report.problems.append("no signed tree head was verified (--require-tree-heads)")
        ok = False
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.summary())
    raise typer.Exit(code=0 if ok else 1)


@app.command("verify-proof")
def verify_proof(
    proof: Annotated[
        Path, typer.Argument(help="A screening's proof (GET /api/audit/screenings/{id}/proof).")
    ],
    public_key: Annotated[
        list[Path],
        typer.Option("--public-key", help="Ed25519 public key (PEM) of the tree-head signer; repeatable."),
    ],
    screening: Annotated[
        Path | None,
        typer.Option("--screening", help="The screening as recorded (JSON): check it against the proof too."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check one screening's proof: its row, its chunk's root, the entry, the entry's place in the chain and
    the signed tree head, with nothing but the public key."""
    try:
        keys = [path.read_bytes() for path in public_key]
        document = json.loads(proof.read_text(encoding="utf-8"))
        content = json.loads(screening.read_text(encoding="utf-8")) if screening is not None else None
        if content is not None and not isinstance(content, dict):
            raise ValueError("--screening must hold one JSON object")
        check = verify_screening_proof(document, public_keys=keys, screening=content)
    except (OSError, ValueError) as exc:
        raise _fail_input(str(exc)) from None
    typer.echo(json.dumps(check.to_dict(), indent=2) if json_output else check.summary())
    raise typer.Exit(code=0 if check.ok else 1)


@app.command()
def bench(
    entries: Annotated[int, typer.Option("--entries", min=1, help="Ledger length to measure.")] = 1_000_000,
    proofs: Annotated[int, typer.Option("--proofs", min=1, help="Proofs of each kind to time.")] = 1000,
    chunk: Annotated[
        int, typer.Option("--chunk", min=1, help="Entries sealed and verified per batch.")
    ] = 100_000,
    file_check: Annotated[
        bool, typer.Option("--file/--no-file", help="Also export to a temp file and verify it end to end.")
    ] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Print verification speed (entries/s), tree build time and proof latency."""
    figures = benchmark(
        entries,
        proofs=proofs,
        chunk=chunk,
        file_check=file_check,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    if json_output:
        typer.echo(json.dumps(figures, indent=2))
        return
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        typer.echo(f"{name:<{width}}  {value}")


if __name__ == "__main__":  # pragma: no cover
    app()
