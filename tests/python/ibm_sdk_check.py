"""Drives the IBM Cloud simulator with IBM's own Python SDK (ibm-platform-services).

Run by tests/ibm_python_sdk.rs:

    python ibm_sdk_check.py IAM_URL RC_URL

with the environment variables SIM_API_KEY (an API key of the seeded account, allowed to create
keys), SIM_INSTANCE_NAME (a name two seeded instances share, so paging with limit=1 needs two
pages) and SIM_INSTANCE_GUIDS (their GUIDs, comma-separated). Prints one line per check and, last,
`OK <n> checks`; exits non-zero on the first failed check. It also uses the simulator's control
endpoint `POST RC_URL/_sim/tokens/expire` to check how the SDK sees an expired token.
"""

import os
import sys
import time
import uuid

import requests

from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import IAMAuthenticator
from ibm_platform_services import ResourceControllerV2
from ibm_platform_services.resource_controller_v2 import (
    ResourceInstancesPager,
    ResourceKeysForInstancePager,
    ResourceKeysPager,
)

CHECKS = 0


def check(condition, what):
    global CHECKS
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    CHECKS += 1
    print(f"ok: {what}", flush=True)


def expect_api_exception(call, status, what):
    try:
        call()
    except ApiException as e:
        check(e.status_code == status, f"{what}: ApiException {e.status_code} ({e.message})")
        return e
    check(False, f"{what}: expected ApiException {status}, got success")
    return None


def client(iam_url, rc_url, api_key):
    authenticator = IAMAuthenticator(api_key, url=iam_url)
    service = ResourceControllerV2(authenticator=authenticator)
    service.set_service_url(rc_url)
    return authenticator, service


def main():
    iam_url, rc_url = sys.argv[1], sys.argv[2]
    api_key = os.environ["SIM_API_KEY"]
    name = os.environ["SIM_INSTANCE_NAME"]
    guids = sorted(os.environ["SIM_INSTANCE_GUIDS"].split(","))

    authenticator, rc = client(iam_url, rc_url, api_key)

    # IAM: a token, which the SDK decoded as a JWT to schedule its refresh at 80 % of the TTL.
    token = authenticator.token_manager.get_token()
    check(isinstance(token, str) and token.count(".") == 2, "IAM token is a three-part JWT")
    tm = authenticator.token_manager
    info = tm.token_info
    check(info.get("token_type") == "Bearer" and info.get("refresh_token") == "not_supported",
          "token response: token_type Bearer, refresh_token not_supported")
    now = time.time()
    ttl = info["expires_in"]
    check(abs(tm.expire_time - info["expiration"]) <= 1, "SDK expire_time (JWT exp) equals the response's expiration")
    check(abs((tm.expire_time - tm.refresh_time) - 0.2 * ttl) <= 1 and tm.refresh_time > now,
          f"SDK refresh_time from the JWT: 80% of a {ttl} s lifetime")

    # Instance lookup by name, one per page, through the SDK pager.
    pager = ResourceInstancesPager(client=rc, name=name, limit=1)
    pages = []
    while pager.has_next():
        pages.append(pager.get_next())
    check(len(pages) == 2 and all(len(p) == 1 for p in pages), f"ResourceInstancesPager(name={name!r}, limit=1): 2 pages of 1")
    found = sorted(r["guid"] for p in pages for r in p)
    check(found == guids, "the pager collected both instances")
    check(all(r["name"] == name and r["state"] == "active" for p in pages for r in p), "instances have the name and state active")
    first = rc.list_resource_instances(name=name, limit=1)
    check(first.get_status_code() == 200 and first.get_result()["rows_count"] == 1
          and "start=" in (first.get_result()["next_url"] or ""), "list_resource_instances: rows_count 1, next_url with start")
    instance = rc.get_resource_instance(id=guids[0]).get_result()
    check(instance["guid"] == guids[0] and instance["crn"].startswith("crn:v1:"), "get_resource_instance by GUID")
    by_crn = rc.get_resource_instance(id=instance["crn"]).get_result()
    check(by_crn["guid"] == guids[0], "get_resource_instance by CRN (URL-encoded by the SDK)")

    # Resource keys: create, get, list (pager), delete.
    key_name = f"sdk-check-{uuid.uuid4().hex[:8]}"
    created = rc.create_resource_key(name=key_name, source=guids[0], role="Manager")
    check(created.get_status_code() == 201, "create_resource_key: 201")
    key = created.get_result()
    check(key["name"] == key_name and key["state"] == "active", "created key is active with its name")
    check("ingestion_key" in key["credentials"], "created key's credentials carry an ingestion_key")
    got = rc.get_resource_key(id=key["guid"]).get_result()
    check(got["guid"] == key["guid"] and got["credentials"] == key["credentials"], "get_resource_key by GUID")
    got = rc.get_resource_key(id=key["crn"]).get_result()
    check(got["guid"] == key["guid"], "get_resource_key by CRN (URL-encoded by the SDK)")
    second = rc.create_resource_key(name=key_name + "-2", source=guids[1]).get_result()
    listed = ResourceKeysPager(client=rc, limit=1).get_all()
    check({key["guid"], second["guid"]} <= {k["guid"] for k in listed} and len(listed) >= 2,
          f"ResourceKeysPager(limit=1) collected all {len(listed)} keys")
    for_instance = ResourceKeysForInstancePager(client=rc, id=guids[0], limit=1).get_all()
    check([k["guid"] for k in for_instance if k["name"] == key_name] == [key["guid"]]
          and all(k["source_crn"] == instance["crn"] for k in for_instance),
          "ResourceKeysForInstancePager(limit=1) lists the instance's keys only")
    by_name = ResourceKeysPager(client=rc, name=key_name).get_all()
    check([k["guid"] for k in by_name] == [key["guid"]], "ResourceKeysPager(name=...) finds exactly the key")
    deleted = rc.delete_resource_key(id=key["guid"])
    check(deleted.get_status_code() == 204, "delete_resource_key: 204")
    check(rc.get_resource_key(id=key["guid"]).get_result()["state"] == "removed", "a deleted key reads as removed")
    expect_api_exception(lambda: rc.delete_resource_key(id=key["guid"]), 410, "second delete")
    rc.delete_resource_key(id=second["guid"])

    # Errors as the SDK sees them.
    expect_api_exception(lambda: rc.get_resource_instance(id=str(uuid.uuid4())), 404, "unknown instance GUID")
    expect_api_exception(lambda: rc.create_resource_key(name="x", source=str(uuid.uuid4())), 404,
                         "create_resource_key for an unknown instance")
    # Past its refresh time the SDK fetches a new token, which the simulator accepts.
    tm.refresh_time = 0
    fresh = tm.get_token()
    check(fresh != token and tm.refresh_time > time.time(), "SDK refresh past refresh_time gets a new token")
    check(rc.get_resource_instance(id=guids[0]).get_status_code() == 200, "the refreshed token is accepted")
    # Tokens the simulator has expired (its control endpoint): 401 from the Resource Controller.
    requests.post(rc_url + "/_sim/tokens/expire", timeout=10).raise_for_status()
    expect_api_exception(lambda: rc.get_resource_instance(id=guids[0]), 401, "an expired token")

    _, wrong_rc = client(iam_url, rc_url, "not-a-key-" + uuid.uuid4().hex)
    e = expect_api_exception(lambda: wrong_rc.list_resource_instances(), 400, "wrong API key (IAM)")
    check(e.message == "Provided API key could not be found", "IAM error message read by the SDK")

    print(f"OK {CHECKS} checks", flush=True)


if __name__ == "__main__":
    main()
