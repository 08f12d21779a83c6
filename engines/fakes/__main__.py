"""``python -m engines.fakes --port P [--flavour vllm|sglang] [--role …]``: one fake engine."""

from __future__ import annotations

import argparse
import dataclasses

from engines.fakes.server import FakeConfig, FakeEngine


def parse(argv: list[str] | None = None) -> FakeConfig:
    """The engine's configuration from the command line."""
    parser = argparse.ArgumentParser(prog="python -m engines.fakes",
                                     description="Run a protocol-faithful fake engine.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    for item in dataclasses.fields(FakeConfig):
        if item.name in ("port",):
            continue
        flag = "--" + item.name.replace("_", "-")
        default = FakeConfig.__dataclass_fields__[item.name].default
        kind = type(default) if default is not dataclasses.MISSING else str
        parser.add_argument(flag, type=kind, default=None)
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FakeConfig)
              if f.name != "port" and getattr(args, f.name) is not None}
    config = FakeConfig(port=args.port, **values)
    return dataclasses.replace(config, advertise_host=config.advertise_host or args.host)


def main() -> None:
    """Serve until interrupted."""
    import uvicorn

    config = parse()
    uvicorn.run(FakeEngine(config), host="127.0.0.1", port=config.port, log_level="warning",
                access_log=False, http="httptools", loop="uvloop")


if __name__ == "__main__":
    main()
