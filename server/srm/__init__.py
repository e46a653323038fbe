"""Server Recovery Manager (SPEC §5-7).

Pure (no IO, no clock):
- `table`: states, reasons and every transition rule, as data.
- `machine`: `SrmMachine`, the core (`handle(event) -> list[Action]`).
- `events` / `actions`: the vocabulary between the core and its runner.
- `liveness`: database and peer liveness judged from samples.
- `admission`: may a login proceed in the SRM's state.
- `peer_protocol`: peer messages as JSON payloads.
- `redirect`: the stream error for the clients a node lets go.

Adapters:
- `runner`: `SrmRunner`, feeds the machine and executes its actions in order.
- `inbox` (its queue), `watch` (liveness sampling), `peer_link` (the channel to the
  peer's SRM), `setup` (what it reads at a (re)start), `handover` (client sessions
  when users change nodes), `state_signal` (logins waiting for a state change).

The package imports nothing eagerly, so `python -m presence_ha.server.srm.table` runs cleanly.
"""
