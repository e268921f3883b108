"""``--out``: an export replaces only a folder of ours and never deletes or overwrites a file it did not write.

Each row of :data:`CASES` prepares a folder, runs the artifact-folder stage of ``xoresnet-export`` on it
(:class:`deploy.export_dir.ArtifactDir`: the check before any work, then a commit of fresh artifacts), and
states the outcome: refused with exit 2 and a one-line reason, or committed; and which files must exist
afterwards with their original content.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from deploy.export_dir import MANIFEST_FILE, PARITY_FILE, ArtifactDir, file_sha256
from xoresnet.errors import UsageError

OURS = {"format": "xoresnet-export", "artifacts": {}}


def our_export(folder: Path, extra: dict[str, str] | None = None) -> None:
    """An earlier export of ours in ``folder``: parity.json and a manifest covering it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARITY_FILE).write_text('{"passed": true}')
    manifest = {**OURS, "artifacts": {PARITY_FILE: file_sha256(folder / PARITY_FILE)}}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)


def prepare(kind: str, root: Path) -> Path:
    out = root / "out"
    if kind == "absent":
        pass
    elif kind == "empty":
        out.mkdir()
    elif kind == "ours":
        our_export(out)
    elif kind == "checkpoint-folder":  # the folder holding the user's checkpoints and notes
        out.mkdir()
        (out / "model.pt").write_bytes(b"weights")
        (out / "notes.txt").write_text("my notes")
    elif kind == "ours-plus-user-file":
        our_export(out, {"notes.txt": "my notes"})
    elif kind == "our-names-no-manifest":
        out.mkdir()
        (out / "report.html").write_text("<p>the user's own page</p>")
    elif kind == "foreign-manifest":
        out.mkdir()
        (out / MANIFEST_FILE).write_text('{"format": "something-else"}')
    elif kind == "subfolder":
        our_export(out)
        (out / "runs").mkdir()
        (out / "runs" / "m.pt").write_bytes(b"weights")
    elif kind == "symlink-to-ours":
        our_export(root / "real")
        out.symlink_to(root / "real")
    elif kind == "dangling-symlink":
        out.symlink_to(root / "nowhere")
    elif kind == "file":
        out.write_text("a file")
    elif kind == "force-clash":
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
        (out / PARITY_FILE).write_text("the user's parity notes")
    elif kind == "dot-dot":
        (root / "sub").mkdir()
        (root / "sub" / "keep.txt").write_text("kept")
        return root / "sub" / ".."
    elif kind in ("immutable", "append-only"):  # chattr +i / +a: the folder cannot be renamed or emptied
        our_export(out)
        chattr("+" + kind[0], out)
    elif kind == "immutable-parent":
        (root / "p").mkdir()
        chattr("+i", root / "p")
        return root / "p" / "out"
    elif kind == "cwd-empty":  # `--out .` in an empty folder: replacing it would pull it from under the shell
        out.mkdir()
        return Path(".")
    elif kind == "cwd-ours":
        our_export(out)
        return Path(".")
    elif kind == "above-cwd":
        (out / "sub").mkdir(parents=True)
        return Path("..")
    else:
        raise AssertionError(kind)
    return out


#: The folder the command runs in, for the cases that name --out relative to it.
CWD = {"cwd-empty": "out", "cwd-ours": "out", "above-cwd": "out/sub"}


def chattr(flag: str, path: Path) -> None:
    """Set an inode flag (needs root and a file system that has them: the case is skipped otherwise)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode:
        pytest.skip(f"chattr {flag} is not available here")


def unlock(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink() and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", "-a", str(path)], capture_output=True)


# kind, force, expected ("ok" or the exit-2 message fragment), files that must keep their content
CASES = [
    ("absent", False, "ok", {}),
    ("empty", False, "ok", {}),
    ("ours", False, "ok", {}),
    ("checkpoint-folder", False, "holds files that are not an xoresnet export ('model.pt', 'notes.txt')",
     {"out/model.pt": "weights", "out/notes.txt": "my notes"}),
    ("checkpoint-folder", True, "ok", {"out/model.pt": "weights", "out/notes.txt": "my notes"}),
    ("ours-plus-user-file", False, "holds files that are not an xoresnet export ('notes.txt')",
     {"out/notes.txt": "my notes"}),
    ("ours-plus-user-file", True, "ok", {"out/notes.txt": "my notes"}),
    ("our-names-no-manifest", False, "holds our file names but no manifest of ours",
     {"out/report.html": "<p>the user's own page</p>"}),
    ("our-names-no-manifest", True, "--force never overwrites a file it did not write",
     {"out/report.html": "<p>the user's own page</p>"}),
    ("foreign-manifest", False, "holds our file names but no manifest of ours", {"out/manifest.json": None}),
    ("subfolder", False, "holds files that are not an xoresnet export ('runs')", {"out/runs/m.pt": "weights"}),
    ("symlink-to-ours", False, "ok", {}),
    ("dangling-symlink", False, "a symlink to", {}),
    ("file", False, "exists and is not a folder", {"out": "a file"}),
    ("force-clash", True, "--force never overwrites a file it did not write",
     {"out/notes.txt": "my notes", "out/parity.json": "the user's parity notes"}),
    ("dot-dot", False, "holds files that are not an xoresnet export", {"sub/keep.txt": "kept"}),
    ("immutable", False, "is immutable (chattr +i)", {"out/parity.json": '{"passed": true}'}),
    ("append-only", False, "is append-only (chattr +a)", {"out/parity.json": '{"passed": true}'}),
    ("immutable-parent", False, "is immutable (chattr +i)", {}),
    ("cwd-empty", False, "is the current folder, which an export cannot replace", {}),
    ("cwd-empty", True, "ok", {}),
    ("cwd-ours", False, "is the current folder, which an export cannot replace", {"out/parity.json": '{"passed": true}'}),
    ("cwd-ours", True, "ok", {}),
    ("above-cwd", False, "is above the current folder", {}),
]


@pytest.mark.parametrize("kind,force,expected,kept", CASES, ids=[f"{c[0]}{'-force' if c[1] else ''}" for c in CASES])
def test_out_folder_cases(tmp_path, monkeypatch, kind, force, expected, kept):
    try:
        check_out_folder_case(tmp_path, monkeypatch, kind, force, expected, kept)
    finally:
        unlock(tmp_path)


def check_out_folder_case(tmp_path, monkeypatch, kind, force, expected, kept):
    out = prepare(kind, tmp_path)
    if kind in CWD:
        monkeypatch.chdir(tmp_path / CWD[kind])
    before = {name: (tmp_path / name).read_text() for name in kept}
    if expected != "ok":
        with pytest.raises(UsageError) as e:
            ArtifactDir(out, force=force)
        assert expected in str(e.value) and "\n" not in str(e.value)
    else:
        art = ArtifactDir(out, force=force)
        art.write_json(PARITY_FILE, {"passed": True, "new": 1})
        art.write_json(MANIFEST_FILE, {**OURS, "artifacts": art.hashes()})
        art.commit()
        real = art.out
        assert json.loads((real / PARITY_FILE).read_text())["new"] == 1
        assert json.loads((real / MANIFEST_FILE).read_text())["format"] == "xoresnet-export"
        if out.is_symlink():
            assert out.is_symlink() and (tmp_path / "real" / PARITY_FILE).is_file()  # the link is kept
    for name, text in before.items():
        assert (tmp_path / name).read_text() == text, name
    leftovers = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_a_failed_export_leaves_no_partial_folder_and_the_old_export(tmp_path):
    our_export(tmp_path / "out")
    art = ArtifactDir(tmp_path / "out")
    art.write_json(PARITY_FILE, {"passed": False})
    art.discard()
    assert json.loads((tmp_path / "out" / PARITY_FILE).read_text()) == {"passed": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_partial_folders_of_dead_processes_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.partial-{pid}-abc"
    stale.mkdir()
    (stale / ".xoresnet-partial").touch()
    (stale / "report.json").write_text("{}")
    crafted = tmp_path / f".out.partial-{pid}-xyz"  # same name pattern, not ours: kept
    crafted.mkdir()
    (crafted / "user.txt").write_text("mine")
    alive = tmp_path / f".out.partial-{os.getpid()}-live"
    alive.mkdir()
    (alive / ".xoresnet-partial").touch()
    ArtifactDir(tmp_path / "out").discard()
    assert not stale.exists() and (crafted / "user.txt").read_text() == "mine" and alive.exists()


def test_interrupted_two_rename_commit_is_recovered(tmp_path):
    """The fallback commit (no exchange rename) renames DIR away first; a kill between the renames leaves
    only ``.DIR.old-PID``, which the next export into the same parent puts back."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    our_export(tmp_path / f".out.old-{int(dead.stdout)}")
    ArtifactDir(tmp_path / "out").discard()
    assert (tmp_path / "out" / PARITY_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_cli_refuses_the_checkpoint_folder_before_any_work(tmp_path):
    """The reported data loss: ``--out`` pointed at the folder holding the checkpoint and notes."""
    (tmp_path / "model.pt").write_bytes((REPO / "models" / "xoresnet-digits-qat.pt").read_bytes())
    (tmp_path / "notes.txt").write_text("my notes")
    exe = Path(sys.executable).parent / "xoresnet-export"
    r = subprocess.run([str(exe), str(tmp_path / "model.pt"), "--out", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "[1/8]" not in r.stderr, r.stderr
    assert "holds files that are not an xoresnet export" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "my notes" and (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize("make", ["folder", "fifo"])
def test_train_out_must_be_a_file_path(tmp_path, make):
    target = tmp_path / "ckpt"
    if make == "folder":
        target.mkdir()
    else:
        os.mkfifo(target)
    exe = Path(sys.executable).parent / "xoresnet-train"
    r = subprocess.run([str(exe), "--dataset", "digits", "--arch", "xoresnet-digits", "--epochs", "1",
                        "--out", str(target), "--no-progress"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("xoresnet-train: error: --out ")
    assert ("is a folder" if make == "folder" else "not a regular file") in r.stderr


def _commit_at_the_same_instant(folder: str, tag: int, barrier, exchange: bool) -> None:
    """One of the racing exports: collect its artifacts, wait for the other, commit."""
    import deploy.export_dir as export_dir

    if not exchange:
        export_dir._renameat2 = lambda *a: False  # the two-rename fallback of platforms without renameat2
    art = ArtifactDir(Path(folder))
    art.write_json(PARITY_FILE, {"passed": True, "tag": tag})
    art.write_json(MANIFEST_FILE, {**OURS, "artifacts": art.hashes()})
    barrier.wait()
    art.commit()


def test_two_exports_committing_into_the_same_folder_at_the_same_instant(tmp_path):
    """Twenty rounds of two processes committing into DIR at once (DIR absent, then present): both succeed,
    DIR holds one of the two complete exports, and nothing is orphaned (no .DIR.partial-*, no .DIR.old-*)."""
    ctx = multiprocessing.get_context("fork")
    out = tmp_path / "out"
    for round_ in range(20):
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_commit_at_the_same_instant, args=(str(out), 2 * round_ + i, barrier, True))
                 for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0], round_
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        tag = json.loads((out / PARITY_FILE).read_text())["tag"]
        assert tag in (2 * round_, 2 * round_ + 1) and manifest["artifacts"][PARITY_FILE] == file_sha256(out / PARITY_FILE)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], round_


def test_an_export_replaces_the_previous_one_and_leaves_no_marker(tmp_path):
    """The temporary folder's ``.xoresnet-partial`` marker is not committed: the folder holds only our artifact
    names, so the next export may replace it."""
    out = tmp_path / "out"
    for tag in range(2):
        art = ArtifactDir(out)
        art.write_json(PARITY_FILE, {"passed": True, "tag": tag})
        art.write_json(MANIFEST_FILE, {**OURS, "artifacts": art.hashes()})
        art.commit()
        assert sorted(os.listdir(out)) == [MANIFEST_FILE, PARITY_FILE]
    assert json.loads((out / PARITY_FILE).read_text())["tag"] == 1
