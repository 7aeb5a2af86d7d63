from tests.conftest import HEADERS_A


async def test_create_and_read_run(client):
    created = await client.post("/api/v1/runs", json={"inputData": {"x": 1}}, headers=HEADERS_A)
    assert created.status_code == 201
    run = created.json()
    fetched = await client.get(f"/api/v1/runs/{run['id']}", headers=HEADERS_A)
    assert fetched.status_code == 200
    assert fetched.json()["inputData"] == {"x": 1}
    assert fetched.json()["orgId"] == "orga"
