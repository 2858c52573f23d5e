// Many WS /events clients in one Node.js process, for the benchmarks and the soak.
//
//   node bench/clients.mjs URL COUNT [EXPECT]
//
// Opens COUNT sockets and prints `ready`. With EXPECT, each socket waits for EXPECT
// events carrying `benchSentAt` (epoch seconds) and the process prints one JSON line
// of delivery latencies in ms, then exits. Without, it holds the sockets, reading,
// until stdin closes, then prints how many events each socket received.
// Node and ws keep the client's own cost per frame small next to the server's.
import WebSocket from "ws";

const [url, countArg, expectArg] = process.argv.slice(2);
const count = Number(countArg);
const expect = Number(expectArg || 0);
const BATCH = 100;
const MARKER = '"benchSentAt":';
const sockets = [];
const latencies = [];
const received = [];
let finished = 0;

function now() {
  return performance.timeOrigin + performance.now();
}

function open(index) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    received[index] = 0;
    let seen = 0;
    socket.on("message", (data) => {
      const text = data.toString();
      if (text.startsWith('{"notice"')) return;
      received[index] += 1;
      if (!expect) return;
      const at = text.indexOf(MARKER);
      if (at < 0) return;
      latencies.push(now() - Number.parseFloat(text.slice(at + MARKER.length)) * 1000);
      seen += 1;
      if (seen === expect) {
        finished += 1;
        if (finished === count) done();
      }
    });
    socket.once("open", () => resolve(socket));
    socket.once("error", reject);
  });
}

function done() {
  process.stdout.write(`${JSON.stringify({ latencies_ms: latencies, received })}\n`, () => {
    for (const socket of sockets) socket.terminate();
    process.exit(0);
  });
}

for (let first = 0; first < count; first += BATCH) {
  const batch = [];
  for (let index = first; index < Math.min(count, first + BATCH); index += 1) batch.push(open(index));
  sockets.push(...(await Promise.all(batch)));
}
process.stdout.write("ready\n");
process.stdin.on("end", () => expect || done());
process.stdin.resume();
setTimeout(() => done(), 300_000).unref();
