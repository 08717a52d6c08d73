"""A charge point driven by the `ocpp` package (PyPI), for the gateway's tests.

Connects to ws[s]://…/ocpp/{id} with subprotocol ocpp1.6 (and Basic auth when a
password is given), then obeys JSON commands on stdin, one per line, and reports
everything on stdout as `EVENT <name> <json>` lines:

  {"cmd": "boot"}                                   BootNotification
  {"cmd": "status", "connector": 1, "status": "Charging"}
  {"cmd": "heartbeat"}
  {"cmd": "authorize", "id_tag": "car-7"}
  {"cmd": "start", "connector": 1, "id_tag": "car-7", "reservation_id": 12}
  {"cmd": "stop", "transaction_id": 1}
  {"cmd": "meter", "connector": 1}
  {"cmd": "data_transfer"}
  {"cmd": "unknown_action"}                         a CALL the CSMS does not implement
  {"cmd": "reserve_answer", "status": "Occupied"}   how later ReserveNow calls are answered
  {"cmd": "close"} / {"cmd": "reconnect"} / {"cmd": "exit"}

Calls from the CSMS (ReserveNow, CancelReservation, TriggerMessage, GetConfiguration)
are answered and reported; TriggerMessage(StatusNotification) is followed by a
StatusNotification per connector with the last status set.
"""

import argparse
import asyncio
import base64
import json
import ssl
import sys
from datetime import datetime, timezone

import websockets
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as Cp
from ocpp.v16 import call, call_result
from ocpp.v16.enums import (
    Action,
    CancelReservationStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    ConfigurationStatus,
    ReservationStatus,
    TriggerMessageStatus,
)


def emit(name, data=None):
    print(f"EVENT {name} {json.dumps(data if data is not None else {}, default=str)}", flush=True)


class ChargePoint(Cp):
    def __init__(self, cp_id, ws, options):
        super().__init__(cp_id, ws, response_timeout=10)
        self.options = options
        # Kept across reconnects: the charger's connectors do not forget.
        if not hasattr(options, "statuses"):
            options.statuses = {c: "Available" for c in range(1, options.connectors + 1)}
        self.statuses = options.statuses

    @on(Action.reserve_now)
    def on_reserve_now(self, connector_id, expiry_date, id_tag, reservation_id, **kwargs):
        emit("reserve_now", {"connector_id": connector_id, "expiry_date": expiry_date,
                             "id_tag": id_tag, "reservation_id": reservation_id})
        return call_result.ReserveNow(status=ReservationStatus(self.options.reserve_answer))

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id, **kwargs):
        emit("cancel_reservation", {"reservation_id": reservation_id})
        return call_result.CancelReservation(status=CancelReservationStatus.accepted)

    @on(Action.trigger_message)
    def on_trigger(self, requested_message, **kwargs):
        emit("trigger_message", {"requested_message": requested_message})
        return call_result.TriggerMessage(status=TriggerMessageStatus.accepted)

    @after(Action.trigger_message)
    async def after_trigger(self, requested_message, **kwargs):
        if requested_message == "StatusNotification":
            for connector, status in self.statuses.items():
                await self.send_status(connector, status)

    @on(Action.get_configuration)
    def on_get_configuration(self, key=None, **kwargs):
        emit("get_configuration", {"key": key})
        value = "true" if self.options.zero else "false"
        return call_result.GetConfiguration(configuration_key=[
            {"key": "ReserveConnectorZeroSupported", "readonly": True, "value": value}])

    @on(Action.change_configuration)
    def on_change_configuration(self, key, value, **kwargs):
        return call_result.ChangeConfiguration(status=ConfigurationStatus.rejected)

    async def send_status(self, connector, status):
        if connector > 0:
            self.statuses[connector] = status
        r = await self.call(call.StatusNotification(
            connector_id=connector, error_code=ChargePointErrorCode.no_error,
            status=ChargePointStatus(status)))
        emit("status_sent", {"connector": connector, "status": status, "answered": r is not None})


def now():
    return datetime.now(timezone.utc).isoformat()


async def command(cp, c):
    kind = c["cmd"]
    if kind == "boot":
        r = await cp.call(call.BootNotification(charge_point_model="test-model", charge_point_vendor="test-vendor"))
        emit("boot", {"status": r.status, "interval": r.interval})
    elif kind == "status":
        await cp.send_status(c["connector"], c["status"])
    elif kind == "heartbeat":
        r = await cp.call(call.Heartbeat())
        emit("heartbeat", {"current_time": r.current_time})
    elif kind == "authorize":
        r = await cp.call(call.Authorize(id_tag=c["id_tag"]))
        emit("authorize", {"status": r.id_tag_info["status"]})
    elif kind == "start":
        kwargs = {}
        if c.get("reservation_id") is not None:
            kwargs["reservation_id"] = c["reservation_id"]
        r = await cp.call(call.StartTransaction(connector_id=c["connector"], id_tag=c["id_tag"],
                                                meter_start=0, timestamp=now(), **kwargs))
        emit("start", {"transaction_id": r.transaction_id, "status": r.id_tag_info["status"]})
    elif kind == "stop":
        r = await cp.call(call.StopTransaction(meter_stop=10, timestamp=now(),
                                               transaction_id=c["transaction_id"]))
        emit("stop", {"answered": r is not None})
    elif kind == "meter":
        r = await cp.call(call.MeterValues(connector_id=c["connector"], meter_value=[
            {"timestamp": now(), "sampledValue": [{"value": "42"}]}]))
        emit("meter", {"answered": r is not None})
    elif kind == "data_transfer":
        r = await cp.call(call.DataTransfer(vendor_id="com.example", message_id="x", data="y"))
        emit("data_transfer", {"status": r.status})
    elif kind == "unknown_action":
        # A CALL the CSMS does not implement: the answer is a CALLERROR.
        r = await cp.call(call.DiagnosticsStatusNotification(status="Idle"), suppress=True)
        emit("unknown_action", {"answered": r is not None})
    elif kind == "reserve_answer":
        cp.options.reserve_answer = c["status"]
        emit("reserve_answer", {"status": c["status"]})
    else:
        emit("bad_command", {"cmd": kind})


async def connect(options):
    headers = {}
    if options.password is not None:
        token = base64.b64encode(f"{options.id}:{options.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    ssl_ctx = None
    if options.url.startswith("wss://"):
        ssl_ctx = ssl.create_default_context(cafile=options.ca)
    protocols = [] if options.no_subprotocol else ["ocpp1.6"]
    return await websockets.connect(f"{options.url}/{options.id}", subprotocols=protocols or None,
                                    additional_headers=headers, ssl=ssl_ctx, open_timeout=10)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="ws://host:port/ocpp")
    p.add_argument("--id", required=True)
    p.add_argument("--password")
    p.add_argument("--ca")
    p.add_argument("--connectors", type=int, default=2)
    p.add_argument("--zero", action="store_true", help="ReserveConnectorZeroSupported")
    p.add_argument("--reserve-answer", default="Accepted")
    p.add_argument("--no-subprotocol", action="store_true")
    options = p.parse_args()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    while True:
        try:
            ws = await connect(options)
        except websockets.exceptions.InvalidStatus as e:
            emit("connect_failed", {"status": e.response.status_code})
            return
        except Exception as e:  # noqa: BLE001 - reported to the test
            emit("connect_failed", {"error": repr(e)})
            return
        emit("connected", {"subprotocol": ws.subprotocol})
        cp = ChargePoint(options.id, ws, options)
        runner = asyncio.create_task(cp.start())
        again = False
        while True:
            line_task = asyncio.create_task(reader.readline())
            done, _ = await asyncio.wait({line_task, runner}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                line_task.cancel()
                emit("closed", {"by": "csms", "code": ws.close_code})
                return
            line = line_task.result()
            if not line:
                return
            c = json.loads(line)
            if c["cmd"] == "close":
                await ws.close()
                runner.cancel()
                emit("closed", {"by": "charger"})
                continue_wait = await reader.readline()
                if not continue_wait:
                    return
                c = json.loads(continue_wait)
                if c["cmd"] == "reconnect":
                    again = True
                    break
                return
            if c["cmd"] == "exit":
                await ws.close()
                return
            try:
                await command(cp, c)
            except Exception as e:  # noqa: BLE001 - reported to the test
                emit("error", {"cmd": c["cmd"], "error": repr(e)})
        if not again:
            return


asyncio.run(main())
