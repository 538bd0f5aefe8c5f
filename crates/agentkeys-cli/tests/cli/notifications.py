"""A stand-in desktop notification server for the tests: it owns
org.freedesktop.Notifications on the session bus at $DBUS_SESSION_BUS_ADDRESS, appends
each Notify call to OUT as one JSON line, and prints "ready" once it owns the name.

usage: notifications.py OUT
"""

import asyncio
import json
import sys

from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface, method


class Notifications(ServiceInterface):
    def __init__(self, out):
        super().__init__("org.freedesktop.Notifications")
        self.out = out
        self.count = 0

    @method()
    def Notify(self, app_name: "s", replaces_id: "u", app_icon: "s", summary: "s", body: "s",
               actions: "as", hints: "a{sv}", expire_timeout: "i") -> "u":
        self.count += 1
        with open(self.out, "a") as f:
            f.write(json.dumps({
                "app_name": app_name, "summary": summary, "body": body,
                "actions": actions, "hints": sorted(hints), "expire_timeout": expire_timeout,
            }) + "\n")
        return self.count

    @method()
    def GetCapabilities(self) -> "as":
        return ["body"]

    @method()
    def GetServerInformation(self) -> "ssss":
        return ["agentkeys-test", "agentkeys", "1", "1.2"]


async def main():
    bus = await MessageBus().connect()
    bus.export("/org/freedesktop/Notifications", Notifications(sys.argv[1]))
    await bus.request_name("org.freedesktop.Notifications")
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
