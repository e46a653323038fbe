"""Server Recovery Manager (SPEC §5-7).

- `table`: states, reasons and every transition rule, as data.
- `machine`: `SrmMachine`, the pure core (`handle(event) -> list[Action]`).
- `events` / `actions`: the vocabulary between the core and its runner.
- `peer_protocol`: peer messages as JSON payloads (pure).
- `runner`: `SrmRunner`, the asyncio adapter (timers, database, peer link, services).

Only `runner` does I/O; it feeds events and executes actions in order.
The package imports nothing eagerly, so `python -m presence_ha.server.srm.table` runs cleanly.
"""
