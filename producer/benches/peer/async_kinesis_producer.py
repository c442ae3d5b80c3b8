"""The peer of the producer benchmark: the Python `async-kinesis` producer with KPL
aggregation, putting user records into a local Kinesis as fast as it takes them.

Usage: python async_kinesis_producer.py ENDPOINT STREAM RECORDS SIZE
Prints one line: `PEER {"records_per_second": ..., "cpu_us_per_record": ...}`.

Its own limits are raised (rate and bandwidth per shard, queue) so that it is not
throttled by itself; the local Kinesis enforces none. CPU is the whole process's
(`time.process_time`: the interpreter does all the work on one thread).
"""

import asyncio
import json
import os
import sys
import time

from kinesis import Producer
from kinesis.processors import KPLStringProcessor


async def main(endpoint, stream, records, size):
    payload = "x" * size
    async with Producer(
        stream_name=stream,
        endpoint_url=endpoint,
        region_name="us-east-1",
        processor=KPLStringProcessor(),
        put_rate_limit_per_shard=1_000_000,
        put_bandwidth_limit_per_shard=1_000_000,
        batch_size=500,
        max_queue_size=1_000_000,
        buffer_time=0.01,
    ) as producer:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(records):
            await producer.put(payload)
        await producer.flush()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    print("PEER " + json.dumps({
        "records_per_second": records / elapsed,
        "cpu_us_per_record": cpu / records * 1e6,
    }), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    endpoint, stream, records, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(endpoint, stream, records, size))
