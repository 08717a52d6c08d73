"""A connect storm: N charge points (the `ocpp` package from PyPI, one asyncio task
each) connect to the gateway at once, boot and send one StatusNotification per
connector. They then stay connected, answer ReserveNow with Accepted and heartbeat,
until stdin closes. Prints `EVENT ready {"sent_ms": {id: ms}, "connect_s": s}` once
every status is answered (sent_ms: wall clock just before each charger's first
StatusNotification).
"""

import argparse
import asyncio
import json
import sys
import time

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, ChargePointErrorCode, ChargePointStatus, ReservationStatus


class StormCp(Cp):
    @on(Action.reserve_now)
    def on_reserve_now(self, **kwargs):
        return call_result.ReserveNow(status=ReservationStatus.accepted)

    @on(Action.cancel_reservation)
    def on_cancel(self, **kwargs):
        return call_result.CancelReservation(status="Accepted")

    @on(Action.get_configuration)
    def on_get_configuration(self, **kwargs):
        return call_result.GetConfiguration(configuration_key=[])


async def one(url, cp_id, connectors, sent, tasks):
    ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"], open_timeout=120)
    cp = StormCp(cp_id, ws, response_timeout=120)
    tasks.append(asyncio.create_task(cp.start()))
    await cp.call(call.BootNotification(charge_point_model="storm", charge_point_vendor="test"))
    sent[cp_id] = time.time() * 1000.0
    for c in range(1, connectors + 1):
        await cp.call(call.StatusNotification(connector_id=c, error_code=ChargePointErrorCode.no_error,
                                              status=ChargePointStatus.available))
    return ws


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--prefix", default="CP")
    p.add_argument("--connectors", type=int, default=2)
    o = p.parse_args()
    sent, tasks = {}, []
    start = time.time()
    sockets = await asyncio.gather(*[one(o.url, f"{o.prefix}-{i:05}", o.connectors, sent, tasks)
                                     for i in range(o.n)])
    print(f"EVENT ready {json.dumps({'sent_ms': sent, 'connect_s': time.time() - start})}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    for ws in sockets:
        await ws.close()


asyncio.run(main())
