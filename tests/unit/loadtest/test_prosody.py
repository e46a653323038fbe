"""Prosody data-file generation (pure parts of loadtest.prosody)."""

import base64

import scramp

from presence_ha.loadtest.prosody import lua_str, prosody_encode, roster_file, scram_sha1_account


def test_paths_are_encoded_like_prosody_datamanager():
    assert prosody_encode("example.test") == "example%2etest"
    assert prosody_encode("user12") == "user12"
    assert prosody_encode("a-b_c") == "a%2db%5fc"


def test_lua_strings_are_escaped():
    assert lua_str('a"b\\c') == '"a\\"b\\\\c"'


def test_account_keys_are_the_rfc5802_keys():
    text = scram_sha1_account("secret", "salt-0123456789", 4096)
    fields = dict(line.strip().rstrip(";").split(" = ") for line in text.splitlines()
                  if " = " in line)
    salt, stored, server, iterations = scramp.ScramMechanism("SCRAM-SHA-1").make_auth_info(
        "secret", iteration_count=4096, salt=b"salt-0123456789")
    assert base64.b64decode(base64.b64encode(salt)) == b"salt-0123456789"
    assert fields['["stored_key"]'] == f'"{stored.hex()}"'
    assert fields['["server_key"]'] == f'"{server.hex()}"'
    assert fields['["iteration_count"]'] == str(iterations)


def test_roster_file_gives_mutual_subscriptions():
    text = roster_file(["b@x", "c@x"])
    assert text.startswith("return {")
    assert '[false] = { ["version"] = 1; ["pending"] = {}; };' in text
    assert '["b@x"] = { ["subscription"] = "both"; ["groups"] = {}; };' in text
    assert text.count('"both"') == 2
