# A device that echoes: the firmware's MQTT client under test, driven over MQTT.
#
#   micropython echo.py HOST PORT PREFIX [KEEPALIVE_S] [RESPONSE_MS] [QUEUE_LEN]
#
# Subscribes (QoS 1) to PREFIX/in/#, on every connection. Each message on
# PREFIX/in/<name> is published back (QoS 1, waiting for its PUBACK) on
# PREFIX/echo/<name>. The Will is PREFIX/will, retained. At start it publishes
# "hello" on PREFIX/hello at QoS 0 and QoS 1. Prints, one per line:
#   UP <conns> | DOWN | GOT <topic> <len> <retained> | ECHOED <name> <retransmits> | MEM <alloc> <peak>
import asyncio
import gc
import sys

import board
import pkmqtt

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keepalive = int(sys.argv[4]) if len(sys.argv) > 4 else 10
response_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
queue_len = int(sys.argv[6]) if len(sys.argv) > 6 else 8

c = pkmqtt.Client(lambda: board.connect_tcp(host, port), "echo-" + prefix.replace("/", "-"),
                  keepalive=keepalive, response_ms=response_ms, queue_len=queue_len,
                  will=(prefix + "/will", b"gone", 1, True), backoff_ms=200, backoff_max_ms=1000)
inbox = (prefix + "/in/").encode()
peak = 0


async def watch():
    while True:
        await c.up.wait()
        print("UP", c.conns)
        await c.subscribe(prefix + "/in/#", 1)
        print("SUBSCRIBED", c.conns)
        await c.down.wait()
        print("DOWN", c.dead)


async def echo():
    global peak
    while True:
        t, m, retained = await c.recv()
        print("GOT", t.decode(), len(m), int(retained))
        if t.startswith(inbox):
            name = t[len(inbox):].decode()
            if name == "hold":  # stop reading for a while: the ring fills and drops the oldest
                await asyncio.sleep_ms(int(m))
                print("DROPS", c.drops)
                continue
            await c.publish(prefix + "/echo/" + name, m, False, 1)
            print("ECHOED", name, c.retransmits)
        gc.collect()
        peak = max(peak, gc.mem_alloc())
        print("MEM", gc.mem_alloc(), peak)


async def main():
    c.start()
    asyncio.create_task(watch())
    asyncio.create_task(echo())
    await c.publish(prefix + "/hello", b"hello0", False, 0)
    await c.publish(prefix + "/hello", b"hello1", False, 1)
    print("HELLO")
    while True:
        await asyncio.sleep(1)


asyncio.run(main())
