"""Where etcd is, from the environment and flags (pure)."""

from __future__ import annotations

import re

import pytest

from routed.datastore.config import EtcdConfig
from routed.errors import RoutedError


def test_an_endpoints_flag_keeps_the_tls_files_from_the_environment():
    env = {"ROUTED_ETCD_CA": "/ca", "ROUTED_ETCD_CERT": "/c", "ROUTED_ETCD_KEY": "/k"}
    config = EtcdConfig.from_env(env, endpoints="https://10.0.0.1:2379")
    assert (config.endpoints, config.ca, config.cert, config.key) == (["https://10.0.0.1:2379"], "/ca", "/c", "/k")


def test_defaults_and_several_endpoints():
    assert EtcdConfig.from_env({}).endpoints == ["http://127.0.0.1:2379"]
    got = EtcdConfig.from_env({"ROUTED_ETCD_ENDPOINTS": "http://a:1, http://b:2"})
    assert got.endpoints == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize("env, needle", [
    ({"ROUTED_ETCD_ENDPOINTS": "a:2379"}, "expected http(s)://HOST:PORT"),
    ({"ROUTED_ETCD_ENDPOINTS": "http://a"}, "expected http(s)://HOST:PORT"),
    ({"ROUTED_ETCD_ENDPOINTS": "https://a:1", "ROUTED_ETCD_CERT": "/c"}, "together"),
    ({"ROUTED_ETCD_ENDPOINTS": "http://a:1", "ROUTED_ETCD_CA": "/ca"}, "not https"),
])
def test_bad_settings_are_one_line_errors(env, needle):
    with pytest.raises(RoutedError, match=re.escape(needle)):
        EtcdConfig.from_env(env)
