"""Stand-ins for the libraries only some of fio's engines use: the slim initramfs.

Debian's fio links 13 libraries and is linked with BIND_NOW, so the loader maps and relocates
all of them, and everything they pull in, before ``main``: ~60 shared objects and ~90 MB of
initramfs (librbd and librados bring libstdc++, boost and the Ceph common code; libgfapi and
libnbd bring libxml2 and ICU's 31 MB of data). Under TCG that is about half a second per fio
start and most of what the kernel unpacks before /init. Eight of the 13 serve only engines a
local-disk job never touches (:data:`STUBBED`). For each of them :func:`build_stubs` compiles a
stand-in with the same soname that defines exactly the functions fio takes from the real one,
in the same symbol versions, each of which prints which library and function it stands for and
exits 127. fio then loads with ~15 objects; a job on one of :data:`FULL_ENGINES`, or a guest
that is itself the Ceph client (fio's rbd engine in the guest), boots the full initramfs, which
carries the real libraries (:func:`vmlab.guest.boot.needs_full_image`).

Other binaries of the image link libraries for a feature vmlab never uses
(:data:`FEATURE_STUBBED`: iperf3's RSA authentication, 4.5 MB of libcrypto); the slim
initramfs stands in for those too (:func:`build_feature_stubs`), and no job needs the full one
for them.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmlab import proc
from vmlab.errors import HostError

# soname -> the fio engines that need it (fio 3.33's engine names)
STUBBED: Mapping[str, tuple[str, ...]] = {
    "librbd.so.1": ("rbd",),
    "librados.so.2": ("rados", "rbd"),
    "libgfapi.so.0": ("gfapi", "gfapi_async"),
    "libnbd.so.0": ("nbd",),
    "libibverbs.so.1": ("rdma",),
    "librdmacm.so.1": ("rdma",),
    "libpmem.so.1": ("libpmem", "dev-dax"),
    "libpmemblk.so.1": ("pmemblk",),
}
FULL_ENGINES = frozenset(engine for engines in STUBBED.values() for engine in engines)
# soname -> (the library of the image that links it, what of it needs the real one). Stood
# in for in the slim initramfs only (the full one keeps them); nothing vmlab runs calls them.
FEATURE_STUBBED: Mapping[str, tuple[str, str]] = {
    # 4.5 MB of the slim initramfs' 16 MB, for iperf3's --rsa-* authentication; with the
    # kernel's crypto self-tests gone, unpacking the initramfs is on a boot's critical path.
    "libcrypto.so.3": ("libiperf.so.0", "iperf3's RSA authentication (--rsa-*)"),
}
EXIT_CODE = 127  # what a shell says for "command not found": nothing of the engine ran

# objdump -T: address, 7 flag columns, section, size, then the version (none at all in a
# library without version information) and the name
_DYNSYM = re.compile(r"^[0-9a-f]+ (.{7}) (\S+)\s+[0-9a-f]+\s+(?:(\(\S+\)|\S+)\s+)?(\S+)$")


@dataclass(frozen=True)
class Symbol:
    name: str
    version: str | None  # None: unversioned (objdump's "Base")


def _objdump(path: Path) -> str:
    return proc.run(
        ["objdump", "-T", path], timeout_s=60, missing_hint="apt-get install binutils"
    ).out


def _version(field: str | None) -> str | None:
    if field is None or field == "Base":
        return None
    return field.strip("()")


def _dynsyms(text: str) -> list[tuple[str, str, Symbol]]:
    """(flags, section, symbol) of each line of ``objdump -T`` output."""
    return [
        (m.group(1), m.group(2), Symbol(m.group(4), _version(m.group(3))))
        for line in text.splitlines()
        if (m := _DYNSYM.match(line))
    ]


def undefined_symbols(text: str) -> set[Symbol]:
    """The strong undefined symbols of ``objdump -T`` output (weak ones may stay undefined)."""
    return {
        sym for flags, section, sym in _dynsyms(text) if section == "*UND*" and "w" not in flags
    }


def defined_symbols(text: str) -> dict[Symbol, bool]:
    """Defined dynamic symbols of ``objdump -T`` output → whether each is a function."""
    return {
        sym: "F" in flags
        for flags, section, sym in _dynsyms(text)
        if section not in ("*UND*", "*ABS*")
    }


def stub_source(soname: str, symbols: Sequence[Symbol]) -> tuple[str, str | None]:
    """The C source of ``soname``'s stand-in and its version script (None if unversioned).

    Each function gets an internal C name bound to its real name and version with ``.symver``,
    so that names no C header may clash and one name may appear in two versions."""
    if soname in FEATURE_STUBBED:
        used = f"(used for {FEATURE_STUBBED[soname][1]}, which vmlab's jobs do not use)"
    else:
        engines = ", ".join(STUBBED.get(soname, ()))
        used = f"(used by fio engines {engines}): vmlab boots the full one for a job on them"
    lines = [
        "/* vmlab: generated stand-in, see vmlab/guest/image/stubs.py */",
        "#include <string.h>",
        "#include <unistd.h>",
        "static void vmlab_stub(const char *what) __attribute__((noreturn));",
        "static void vmlab_stub(const char *what) {",
        '    static const char head[] = "vmlab: ";',
        f'    static const char tail[] = " is a stand-in of {soname} in the slim guest '
        f'initramfs {used}\\n";',
        "    (void)!write(2, head, sizeof head - 1);",
        "    (void)!write(2, what, strlen(what));",
        "    (void)!write(2, tail, sizeof tail - 1);",
        f"    _exit({EXIT_CODE});",
        "}",
    ]
    versions: dict[str, list[str]] = {}
    for i, sym in enumerate(sorted(symbols, key=lambda s: (s.name, s.version or ""))):
        impl = f"vmlab_stub_{i}"
        label = sym.name if sym.version is None else f"{sym.name}@{sym.version}"
        if sym.version is None:  # the C function's symbol is the real name
            lines.append(f'void {impl}(void) __asm__("{sym.name}");')
        lines.append(f'void {impl}(void) {{ vmlab_stub("{label}"); }}')
        if sym.version is not None:
            versions.setdefault(sym.version, []).append(sym.name)
            lines.append(f'__asm__(".symver {impl}, {sym.name}@@{sym.version}");')
    last = list(versions)[-1] if versions else None  # its node hides the internal names
    script = "".join(
        f"{version} {{ global: {' '.join(f'{n};' for n in names)}"
        f"{' local: *;' if version == last else ''} }};\n"
        for version, names in versions.items()
    )
    return "\n".join(lines) + "\n", (script if versions else None)


def needed_by(binary: Path, libraries: Mapping[str, Path]) -> dict[str, list[Symbol]]:
    """soname → the symbols ``binary`` takes from it, for each of ``libraries`` (soname → the
    real file); a library fio takes data (not a function) from cannot be stood in for."""
    text = _objdump(binary)
    wanted = undefined_symbols(text)
    # Data a position-dependent or PIE binary takes from a library is copied into its own
    # .bss at load time (R_X86_64_COPY): such a symbol is defined in the binary, not undefined.
    copied = {s.name for s, function in defined_symbols(text).items() if not function}
    needed: dict[str, list[Symbol]] = {}
    for soname, path in libraries.items():
        exported = defined_symbols(_objdump(path))
        taken = sorted((s for s in wanted if s in exported), key=lambda s: s.name)
        data = [s.name for s in taken if not exported[s]]
        data += sorted(copied & {s.name for s, function in exported.items() if not function})
        if data:
            raise HostError(
                f"{binary.name} takes data ({', '.join(data)}) from {soname}: a stand-in "
                "can only replace functions",
                hint="vmlab.guest.image.stubs.STUBBED lists a library it cannot stub; "
                "remove it there",
            )
        needed[soname] = taken
    return needed


def build_stubs(binary: Path, libraries: Mapping[str, Path], out: Path) -> dict[str, Path]:
    """Compile a stand-in into ``out`` for each of ``libraries`` that ``binary`` links;
    returns soname → stand-in. Needs gcc (scripts/setup installs it)."""
    out.mkdir(parents=True, exist_ok=True)
    gcc = shutil.which("gcc")
    if gcc is None:
        raise HostError(
            "gcc is not installed: the slim guest initramfs compiles stand-ins of the "
            f"libraries only some fio engines use ({', '.join(sorted(libraries))})",
            hint="apt-get install gcc (scripts/setup does)",
        )
    sources = out / "src"  # out itself holds only the stand-ins (an LD_LIBRARY_PATH entry)
    sources.mkdir(exist_ok=True)
    built: dict[str, Path] = {}
    for soname, symbols in needed_by(binary, libraries).items():
        source, script = stub_source(soname, symbols)
        c_file = sources / f"{soname}.c"
        c_file.write_text(source)
        argv: list[str | Path] = [gcc, "-shared", "-fPIC", "-O1", "-o", out / soname, c_file]
        argv.append(f"-Wl,-soname,{soname}")
        if script is not None:
            map_file = sources / f"{soname}.map"
            map_file.write_text(script)
            argv.append(f"-Wl,--version-script={map_file}")
        proc.run(argv, timeout_s=120)
        built[soname] = out / soname
    return built


def build_feature_stubs(closure: Mapping[str, Path], out: Path) -> dict[str, Path]:
    """Stand-ins for :data:`FEATURE_STUBBED` into ``out``, each built against the library of
    ``closure`` (an ldd closure: guest path -> file) that links it; returns soname ->
    stand-in. A library the closure no longer has (the package changed) needs none."""
    by_name = {Path(guest).name: src for guest, src in closure.items()}
    built: dict[str, Path] = {}
    for soname, (user, _) in FEATURE_STUBBED.items():
        if soname in by_name and user in by_name:
            built.update(build_stubs(by_name[user], {soname: by_name[soname]}, out))
    return built


def stubbed_of(closure: Mapping[str, Path]) -> dict[str, Path]:
    """Of an ldd closure (guest path → file), soname → file for the libraries :data:`STUBBED`."""
    return {Path(guest).name: src for guest, src in closure.items() if Path(guest).name in STUBBED}
