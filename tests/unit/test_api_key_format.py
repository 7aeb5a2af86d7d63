"""The key format of SPEC section 3: fmn_<environment>_<orgId>_<random>, org = third part."""

from __future__ import annotations

import pytest

from foreman import errors
from foreman.server.auth import org_for_key


@pytest.mark.parametrize(
    ("key", "org"),
    [
        ("fmn_prod_acme_7f3k2", "acme"),
        ("fmn_test_orga_k1", "orga"),
        ("fmn_dev_acme_a_b_c", "acme"),
        ("fmn_x_Org-1.b_r", "Org-1.b"),
    ],
)
def test_org_is_the_third_part(key, org):
    assert org_for_key(key, allow_test_key=True) == org


@pytest.mark.parametrize(
    "key",
    [
        "",
        "fmn",
        "fmn_prod_acme",
        "fmn_prod_acme_",
        "fmn__acme_r",
        "fmn_prod__r",
        "FMN_prod_acme_r",
        "xyz_prod_acme_r",
        "fmn_prod_ac\nme_r",
        "fmn_prod_acme_" + "r" * 600,
    ],
)
def test_malformed_keys_are_refused(key):
    with pytest.raises(errors.UnauthorizedError, match="Invalid API key format"):
        org_for_key(key, allow_test_key=True)


def test_the_test_key_maps_to_test_org_unless_disabled():
    assert org_for_key("test-api-key", allow_test_key=True) == "test-org"
    with pytest.raises(errors.UnauthorizedError, match="Invalid API key format"):
        org_for_key("test-api-key", allow_test_key=False)
