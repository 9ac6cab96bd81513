"""The one auth decision (serving.core.auth): key → identity → role → allowed, for every face."""

from __future__ import annotations

import pytest

from serving.api.settings import ApiKeySpec
from serving.core.auth import (
    ADMIN,
    READER,
    Denial,
    Identity,
    KeyRing,
    authorize,
    presented_key,
)

READER_KEY = ApiKeySpec("dash", READER, "reader-key-0123456789abcdef")
ADMIN_KEY = ApiKeySpec("ops", ADMIN, "admin-key-0123456789abcdef")
DASH, OPS = Identity("dash", READER), Identity("ops", ADMIN)


# (presented, identity, needs, require_key) → (denial, identity allowed as)
@pytest.mark.parametrize(
    ("presented", "identity", "needs", "require_key", "denial"),
    [
        (True, None, READER, False, Denial.INVALID_KEY),  # unknown key: refused even where anonymous is ok
        (True, None, READER, True, Denial.INVALID_KEY),
        (True, None, ADMIN, False, Denial.INVALID_KEY),
        (False, None, READER, False, None),  # anonymous reader
        (False, None, READER, True, Denial.KEY_REQUIRED),
        (False, None, ADMIN, False, Denial.KEY_REQUIRED),
        (False, None, ADMIN, True, Denial.KEY_REQUIRED),
        (True, DASH, READER, False, None),
        (True, DASH, READER, True, None),
        (True, DASH, ADMIN, False, Denial.ROLE_TOO_LOW),
        (True, DASH, ADMIN, True, Denial.ROLE_TOO_LOW),
        (True, OPS, READER, True, None),  # admin may read
        (True, OPS, ADMIN, False, None),
    ],
)
def test_decision_table(presented, identity, needs, require_key, denial):
    decision = authorize(presented, identity, needs, require_key)
    assert decision.denial is denial
    assert decision.allowed is (denial is None)
    assert decision.forbidden is (denial is Denial.ROLE_TOO_LOW)
    assert decision.identity == (identity if denial in (None, Denial.ROLE_TOO_LOW) else None)
    if denial is not None:
        assert decision.message


def test_refusal_messages_name_the_reason_never_the_key():
    ring = KeyRing((READER_KEY, ADMIN_KEY), pepper="p")
    low = ring.decide(READER_KEY.key, ADMIN)
    assert low.message == "key 'dash' has role 'reader'; admin needed"
    assert READER_KEY.key not in low.message
    assert ring.decide("typo-typo-typo-typo", READER).message == "invalid API key"
    assert ring.decide(None, ADMIN).message == "an admin API key is required"
    without_admin = KeyRing((READER_KEY,), pepper="p")
    assert without_admin.decide(None, ADMIN).message == "no admin API key is configured"


def test_keyring_decides_from_the_presented_key():
    ring = KeyRing((READER_KEY, ADMIN_KEY), pepper="p", require_key=True)
    assert ring.decide(ADMIN_KEY.key, ADMIN).identity == OPS
    assert ring.decide(READER_KEY.key, READER).identity == DASH
    assert ring.decide(None, READER).denial is Denial.KEY_REQUIRED
    assert ring.decide("", READER).denial is Denial.KEY_REQUIRED  # an empty header is no key
    assert ring.decide(ADMIN_KEY.key + "x", READER).denial is Denial.INVALID_KEY


def test_unknown_required_role_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown role"):
        authorize(False, None, "root", require_key=False)


def test_a_key_with_an_unconfigured_role_gets_nothing_beyond_anonymous():
    assert authorize(True, Identity("x", "guest"), READER, require_key=False).denial is Denial.ROLE_TOO_LOW


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"x-api-key": " k1 "}, "k1"),
        ({"authorization": "Bearer k2"}, "k2"),
        ({"authorization": "bearer  k3 "}, "k3"),
        ({"x-api-key": "k1", "authorization": "Bearer k2"}, "k1"),  # X-API-Key wins
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({"x-api-key": "  "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key
