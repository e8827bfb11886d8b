"""The compiled kernels' cache folder: nothing is loaded that another user could have written.

A library found in the cache folder runs inside the process that loads it, so
the folder must be the user's own and writable by nobody else (checked with
``os.lstat``: no symbolic links), and so must the library file; otherwise the
module warns and builds in a private folder of its own.  Planted libraries
here write a marker file when they are loaded (a constructor), so "not loaded"
is seen, not inferred.  Builds use a fake compiler that copies one library
built here with the real one (instant, and it leaves its output writable by
everyone, like a careless linker); one test builds with the real compiler.
Each test has its own folders under tmp_path and its own copy of the module;
SYMCE_CACHE_DIR, XDG_CACHE_HOME, HOME and TMPDIR are set per test.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

from tests.forking import passes_in_forked_child
from tests.parity import load_generated

NAMES = ("cross_entropy_numpy", "cross_entropy_torch")
CC = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
OTHER_UID = 54321  # a user that is not this one
needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="giving a file to another user needs root")


@pytest.fixture(scope="module")
def real_library(tmp_path_factory):
    """The numpy module's library, built once with the real compiler."""
    folder = tmp_path_factory.mktemp("real-build")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMCE_CACHE_DIR", str(folder))
        mp.delenv("CC", raising=False)
        library = load_generated("cross_entropy_numpy").compiled_library()
    assert library is not None
    return library._name


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory):
    """(library, marker): the library creates the file ``marker`` when it is loaded."""
    folder = tmp_path_factory.mktemp("planted")
    marker = folder / "marker"
    source = folder / "planted.c"
    source.write_text('#include <stdio.h>\n'
                      '__attribute__((constructor)) static void planted(void)\n'
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    library = folder / "planted.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library, marker


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No SYMCE_CACHE_DIR; XDG_CACHE_HOME, HOME and TMPDIR under tmp_path (TMPDIR made)."""
    monkeypatch.delenv("SYMCE_CACHE_DIR", raising=False)
    monkeypatch.delenv("SYMCE_COMPILE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return tmp_path


@pytest.fixture
def fake_cc(env, real_library, monkeypatch):
    """CC: copies the real library to ``-o``'s path, mode 666; the log of its calls."""
    log = env / "cc.log"
    log.write_text("")
    script = env / "fake-cc"
    script.write_text("#!/bin/sh\n"
                      f'echo "$@" >> "{log}"\n'
                      'while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
                      f'rm -f "$out" && cp "{real_library}" "$out" && chmod 666 "$out"\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    return log


def _library_name(env, monkeypatch, name="cross_entropy_numpy"):
    """The file name the module looks for first under this CC (from a build in a scratch folder)."""
    with monkeypatch.context() as mp:
        mp.setenv("SYMCE_CACHE_DIR", str(env / "scratch"))
        library = load_generated(name).compiled_library()
    return Path(library._name).name


def _loads_privately(module, env, refused, why):
    """compiled_library() warns once that ``refused`` is not used because ``why``,
    and loads a library from a private folder: made by mkdtemp in the temp dir,
    this user's, 0700, not ``refused``."""
    with pytest.warns(RuntimeWarning) as caught:
        library = module.compiled_library()
    messages = [str(w.message) for w in caught if "symce" in str(w.message)]
    assert len(messages) == 1, messages
    assert str(refused) in messages[0] and why in messages[0], messages[0]
    assert library is not None
    folder = Path(library._name).parent
    assert folder != refused and folder.parent == env / "tmp"
    assert folder.name.startswith("symce-")
    info = folder.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    if os.path.isdir(refused):  # a folder refused, not a library in it
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert Path(module._cache_dir()) == folder  # asked again: the same, no warning
    return library


def _plant(folder, name, planted_library):
    library, marker = planted_library
    if marker.exists():
        marker.unlink()
    shutil.copy(library, folder / name)
    return folder / name


# -- folders that are refused -------------------------------------------------
def _chain_folder(env, monkeypatch, where):
    """The folder the module tries first with ``where`` the first step of the
    fallback order that applies (SYMCE_CACHE_DIR is set by the caller, once the
    folder or link exists)."""
    if where == "SYMCE_CACHE_DIR":
        return env / "given"
    if where == "XDG_CACHE_HOME":
        return env / "xdg" / "symce"
    monkeypatch.delenv("XDG_CACHE_HOME")
    if where == "HOME":
        return env / "home" / ".cache" / "symce"
    (env / "home").mkdir()  # TMPDIR: ~/.cache cannot be a folder
    (env / "home" / ".cache").write_text("")
    return env / "tmp" / f"symce-{os.getuid()}"


WHERE = ["SYMCE_CACHE_DIR", "XDG_CACHE_HOME", "HOME", "TMPDIR"]


@pytest.mark.parametrize("module_name", NAMES)
@pytest.mark.parametrize("where", WHERE)
def test_world_writable_folder_is_refused(env, fake_cc, planted_library, monkeypatch, where,
                                          module_name):
    name = _library_name(env, monkeypatch, module_name)
    folder = _chain_folder(env, monkeypatch, where)
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    if where == "SYMCE_CACHE_DIR":
        monkeypatch.setenv("SYMCE_CACHE_DIR", str(folder))
    planted = _plant(folder, name, planted_library)
    module = load_generated(module_name)
    _loads_privately(module, env, folder, "others can write to it (mode 777)")
    assert not planted_library[1].exists(), "the planted library was loaded"
    assert sorted(p.name for p in folder.iterdir()) == [name]  # nothing built there
    assert planted.read_bytes() == planted_library[0].read_bytes()


@needs_root
@pytest.mark.parametrize("where", WHERE)
def test_folder_of_another_user_is_refused(env, fake_cc, planted_library, monkeypatch, where):
    name = _library_name(env, monkeypatch)
    folder = _chain_folder(env, monkeypatch, where)
    folder.mkdir(parents=True, mode=0o700)
    if where == "SYMCE_CACHE_DIR":
        monkeypatch.setenv("SYMCE_CACHE_DIR", str(folder))
    os.chown(_plant(folder, name, planted_library), OTHER_UID, OTHER_UID)
    os.chown(folder, OTHER_UID, OTHER_UID)
    module = load_generated("cross_entropy_numpy")
    _loads_privately(module, env, folder, f"belongs to uid {OTHER_UID}")
    assert not planted_library[1].exists(), "the planted library was loaded"
    assert sorted(p.name for p in folder.iterdir()) == [name]


@pytest.mark.parametrize("where", WHERE)
def test_symlinked_folder_is_refused(env, fake_cc, planted_library, monkeypatch, where):
    """A link to a folder that is private and this user's: still refused (where
    the link points can change under the check)."""
    name = _library_name(env, monkeypatch)
    link = _chain_folder(env, monkeypatch, where)
    target = env / "elsewhere"
    target.mkdir(mode=0o700)
    _plant(target, name, planted_library)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    if where == "SYMCE_CACHE_DIR":
        monkeypatch.setenv("SYMCE_CACHE_DIR", str(link) + os.sep)  # a trailing / follows links
    module = load_generated("cross_entropy_numpy")
    _loads_privately(module, env, link, "symbolic link")
    assert not planted_library[1].exists(), "the planted library was loaded"


# -- library files that are refused in a good folder ----------------------------
def _group_writable(path):
    path.chmod(0o664)
    return "others can write to it (mode 664)"


def _another_users(path):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, OTHER_UID, OTHER_UID)
    path.chmod(0o755)
    return f"belongs to uid {OTHER_UID}"


def _symlink_to_it(path):
    elsewhere = path.parent.parent / "library-elsewhere.so"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    return "symbolic link"


@pytest.mark.parametrize("spoil", [_group_writable, _another_users, _symlink_to_it],
                         ids=["group-writable", "another-user", "symlink"])
def test_planted_library_in_a_good_folder_is_not_loaded(env, fake_cc, planted_library,
                                                        monkeypatch, spoil):
    name = _library_name(env, monkeypatch)
    folder = env / "xdg" / "symce"
    folder.mkdir(parents=True, mode=0o700)
    planted = _plant(folder, name, planted_library)
    why = spoil(planted)
    module = load_generated("cross_entropy_numpy")
    _loads_privately(module, env, planted, why)
    assert not planted_library[1].exists(), "the planted library was loaded"
    assert os.path.lexists(planted)  # left alone


# -- the normal path -------------------------------------------------------------
def test_folders_made_for_the_cache_are_private(env, fake_cc, monkeypatch):
    """XDG_CACHE_HOME does not exist yet: it, its missing parents and symce are
    made 0700; the library (written 666 by this compiler) is 0700 when loaded."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "a" / "b" / "cache"))
    module = load_generated("cross_entropy_numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        library = module.compiled_library()
    assert Path(library._name).parent == env / "a" / "b" / "cache" / "symce"
    made = [env / "a", env / "a" / "b", env / "a" / "b" / "cache"]
    for folder in (*made, made[-1] / "symce"):
        assert stat.S_IMODE(folder.lstat().st_mode) == 0o700, folder
    assert stat.S_IMODE(os.lstat(library._name).st_mode) == 0o700
    assert len(fake_cc.read_text().splitlines()) == 1  # built, by the fake compiler


def test_real_build_is_private_and_reused(env, monkeypatch):
    """The real compiler, under umask 002: the folder is made 0700, the library
    is not writable by others (whatever mode the linker gave it), and the next
    module finds it (no compiler run) and loads it."""
    monkeypatch.delenv("CC", raising=False)
    old = os.umask(0o002)
    try:
        module = load_generated("cross_entropy_numpy")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            library = module.compiled_library()
    finally:
        os.umask(old)
    path = Path(library._name)
    assert path.parent == env / "xdg" / "symce"
    assert stat.S_IMODE(path.parent.lstat().st_mode) == 0o700
    assert not path.lstat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    again = load_generated("cross_entropy_numpy")

    def no_compiler(*args, **kwargs):
        raise AssertionError("the cached build should have been used")

    monkeypatch.setattr(again.subprocess, "run", no_compiler)
    assert Path(again.compiled_library()._name) == path


def test_a_given_folder_that_exists_privately_is_used(env, fake_cc, monkeypatch):
    """SYMCE_CACHE_DIR, this user's and not writable by others (0755): used as it is."""
    given = env / "given"
    given.mkdir(mode=0o755)
    given.chmod(0o755)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(given))
    module = load_generated("cross_entropy_numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Path(module.compiled_library()._name).parent == given
    assert stat.S_IMODE(given.lstat().st_mode) == 0o755  # not changed


def test_without_uids_only_symbolic_links_are_refused(env, fake_cc, monkeypatch):
    """Where os.getuid does not exist (Windows) the mode bits do not say who may
    write: a folder with every bit set is used, a symbolic link still is not."""
    loose = env / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    link = env / "link"
    link.symlink_to(loose)
    monkeypatch.delattr(os, "getuid")
    for folder, refused in ((loose, False), (link, True)):
        monkeypatch.setenv("SYMCE_CACHE_DIR", str(folder))
        module = load_generated("cross_entropy_numpy")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            library = module.compiled_library()
        ours = [w for w in caught if "symce" in str(w.message)]
        assert (Path(library._name).parent != folder) == refused == bool(ours), ours


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_makes_its_own_private_folder(env, fake_cc, monkeypatch):
    bad = env / "bad"
    bad.mkdir()
    bad.chmod(0o777)
    monkeypatch.setenv("SYMCE_CACHE_DIR", str(bad))
    module = load_generated("cross_entropy_numpy")
    with pytest.warns(RuntimeWarning, match="others can write"):
        parent = module._cache_dir()

    def child():
        mine = module._cache_dir()
        return mine != parent and Path(mine).is_dir() and Path(parent).is_dir()

    assert passes_in_forked_child(child)
