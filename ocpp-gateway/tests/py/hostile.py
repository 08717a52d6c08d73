"""Hostile frames, sent raw with `websockets` (PyPI): every one must be answered by a
CALLERROR and the session must live on; a valid Heartbeat afterwards is answered.
With --oversized N, finally sends an N-byte message and reports how the connection
ended. Prints one JSON object: {"replies": [...], "heartbeat": ..., "oversized": ...}.
"""

import argparse
import asyncio
import json

import websockets

FRAMES = [
    "this is not json",
    "{\"an\": \"object\"}",
    "[]",
    "[2]",
    "[7, \"h1\", {}]",
    "[2, \"h2\", \"Heartbeat\"]",
    "[2, \"h3\", \"NoSuchAction\", {}]",
    "[2, \"h4\", \"StatusNotification\", {\"connectorId\": \"one\", \"errorCode\": \"NoError\", \"status\": \"Charging\"}]",
    "[2, \"h5\", \"StatusNotification\", {\"connectorId\": 1, \"errorCode\": \"NoError\", \"status\": \"Exploding\"}]",
    "[2, \"h6\", \"BootNotification\", {\"chargePointVendor\": \"v\"}]",
    "[2, \"h7\", \"BootNotification\", {\"chargePointVendor\": \"" + "v" * 30 + "\", \"chargePointModel\": \"m\"}]",
    "[2, \"h8\", \"StatusNotification\", {\"connectorId\": 99, \"errorCode\": \"NoError\", \"status\": \"Charging\"}]",
    "[3, \"nobody-asked\", {}]",
]


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--oversized", type=int, default=0)
    o = p.parse_args()
    out = {"replies": []}
    async with websockets.connect(o.url, subprotocols=["ocpp1.6"], max_size=None) as ws:
        for f in FRAMES:
            await ws.send(f)
            if f.startswith("[3"):
                continue  # a stray CALLRESULT gets no answer
            out["replies"].append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        await ws.send(json.dumps([2, "ok-1", "Heartbeat", {}]))
        out["heartbeat"] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if o.oversized:
            try:
                await ws.send("[2, \"big\", \"DataTransfer\", {\"vendorId\": \"x\", \"data\": \"" + "x" * o.oversized + "\"}]")
                await asyncio.wait_for(ws.recv(), 10)
                out["oversized"] = "answered"
            except websockets.exceptions.ConnectionClosed as e:
                out["oversized"] = "closed"
            except asyncio.TimeoutError:
                out["oversized"] = "silence"
    print(json.dumps(out), flush=True)


asyncio.run(main())
