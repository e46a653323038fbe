"""Fixtures of every integration test.

Rules: the integration tests of one pytest process share one cluster key, named by
`$PRESENCE_HA_CLUSTER_KEY` (as a multi-host site names one key file for its nodes and
admin commands): the in-process CLI, the node processes and `up` all find it there,
whatever database and data directories a test uses, module-scoped pairs included. A
test of the default place (`<data_dir>/cluster.key`) removes the variable itself
(`monkeypatch.delenv`).
"""

from __future__ import annotations

import pytest

from presence_ha.server.cluster_key import ENV_CLUSTER_KEY, KEY_FILE


@pytest.fixture(scope="session", autouse=True)
def cluster_key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster-key") / KEY_FILE
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_CLUSTER_KEY, str(path))
        yield path
