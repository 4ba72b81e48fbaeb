"""Boot configs from Jinja2 templates, and the ramdisk's kernel command line.

Each format has a built-in template in ``ironworks/netboot/templates`` that an operator can replace
by path (``[netboot] pxe_template``, ``grub_template``, ``ipxe_template``, ``petitboot_template``).
A template gets the variables documented in docs/netboot.md: ``uuid``, ``boot`` (``deploy`` or
``local``), ``boot_mode`` (``bios``/``uefi``), ``kernel``, ``ramdisk`` (paths or URLs as that
loader wants them), ``cmdline`` (the whole kernel command line), ``params`` (its tokens) and, for
the per-MAC formats, ``mac`` and ``bootif``.

Kernel command line values are checked before anything is written: a newline, quote, backslash or a
character a loader's script language would interpret (``$ ; | & < > \\```) is refused with an
error naming the parameter, since it would end a config line or run as a command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ironworks.errors import ConfigError, InvalidInput

#: format -> (built-in template file, the [netboot] key that overrides it)
TEMPLATES = {
    "pxelinux": ("pxelinux.cfg.j2", "pxe_template"),
    "grub": ("grub.cfg.j2", "grub_template"),
    "ipxe": ("boot.ipxe.j2", "ipxe_template"),
    "petitboot": ("petitboot.cfg.j2", "petitboot_template"),
    "ipxe_main": ("main.ipxe.j2", ""),
    "grub_master": ("grub-master.cfg.j2", ""),
}
#: characters no kernel parameter may hold: they end a config line or mean something to a loader's
#: script language (iPXE and GRUB expand ``$``; GRUB splits commands on ``;|&<>``)
_FORBIDDEN = set("\"'\\$`;|&<>")
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_SECRET_WORDS = ("token", "password", "secret", "key")

_env = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, trim_blocks=True
)
_cache: dict[tuple[str, int], jinja2.Template] = {}


def _is_secret(name: str) -> bool:
    return any(w in name.lower() for w in _SECRET_WORDS)


def check_token(token: str, *, source: str) -> str:
    """``token`` if it can stand on any loader's kernel line; ``InvalidInput`` naming ``source`` if not."""
    name = token.partition("=")[0]
    shown = f"{name}=..." if _is_secret(name) else repr(token)
    bad = sorted({c for c in token if c in _FORBIDDEN or not c.isprintable() or c.isspace()})
    if bad:
        names = ", ".join({"\n": "newline", "\t": "tab", " ": "space"}.get(c, repr(c)) for c in bad)
        raise InvalidInput(
            f"The kernel parameter {shown} from {source} contains {names}, which would break the boot config "
            "line or be run by the boot loader. Remove those characters from the value.",
            field=source,
        )
    return token


def kernel_params(params: Mapping[str, Any] | None, extras: Iterable[tuple[str, str]]) -> list[str]:
    """The kernel command line tokens: ``params`` (``key=value``, in order) then each source's extras.

    ``extras`` are ``(source, text)`` pairs such as ``("driver_info/kernel_append_params", "nomodeset")``;
    their text is split on whitespace. A ``None`` value in ``params`` is left out.
    """
    tokens: list[str] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if not _KEY.match(str(key)):
            raise InvalidInput(f"The kernel parameter name {key!r} is not valid: use letters, digits and '_.-'.")
        source = "the conductor's parameters" if key != "ipa-api-url" else "[api] public_url"
        value = str(value)
        if value == "" or any(c.isspace() for c in value):
            shown = "its value" if _is_secret(str(key)) else repr(value)
            raise InvalidInput(
                f"The kernel parameter {key} has {shown}, which is empty or holds whitespace; a kernel "
                "parameter value must be one word.",
                field=str(key),
            )
        tokens.append(check_token(f"{key}={value}", source=source))
    for source, text in extras:
        if not isinstance(text, str):
            raise InvalidInput(f"{source} must be a string of kernel parameters, not {type(text).__name__}.")
        for line_end in ("\n", "\r"):
            if line_end in text:
                raise InvalidInput(
                    f"{source} contains a line break, which would end the boot config line; put every kernel "
                    "parameter on one line, separated by spaces.",
                    field=source,
                )
        tokens.extend(check_token(t, source=source) for t in text.split())
    return tokens


def template_for(fmt: str, overrides: Mapping[str, str]) -> tuple[str, jinja2.Template]:
    """``(name, template)`` for a format: the operator's file if configured, else the built-in one."""
    builtin, key = TEMPLATES[fmt]
    path = overrides.get(key, "") if key else ""
    if path:
        p = Path(path)
        try:
            st = p.stat()
            cache_key = (str(p), st.st_mtime_ns)
            if cache_key not in _cache:
                _cache[cache_key] = _env.from_string(p.read_text())
        except OSError as exc:
            raise ConfigError(
                f"[netboot] {key} names {path}, which cannot be read ({exc.strerror}). Fix the path or set it to "
                '"" for the built-in template.'
            ) from exc
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"The template {path} ([netboot] {key}) has a syntax error on line {exc.lineno}: {exc.message}."
            ) from exc
        return path, _cache[cache_key]
    cache_key = (builtin, 0)
    if cache_key not in _cache:
        text = resources.files("ironworks.netboot").joinpath("templates", builtin).read_text()
        _cache[cache_key] = _env.from_string(text)
    return builtin, _cache[cache_key]


def render(fmt: str, overrides: Mapping[str, str], **context: Any) -> str:
    """Render a format's template with ``context``; a broken operator template is a ``ConfigError``."""
    name, template = template_for(fmt, overrides)
    try:
        return template.render(**context)
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"The boot template {name} uses an unknown variable ({exc.message}); the variables are listed in "
            "docs/netboot.md."
        ) from exc
    except jinja2.TemplateError as exc:
        raise ConfigError(f"Rendering the boot template {name} failed: {exc}.") from exc
