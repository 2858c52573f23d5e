// The stronger peer for the unpinned comparison: the same Express token server
// (express_token.mjs) under node:cluster, one process per core, as a Node user scales it.
import cluster from "node:cluster";
import { availableParallelism } from "node:os";

if (cluster.isPrimary) {
  let stopping = false;
  for (let i = 0; i < availableParallelism(); i++) cluster.fork();
  cluster.on("exit", () => {
    if (!stopping) cluster.fork();
  });
  process.on("SIGTERM", () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.kill();
    process.exit(0);
  });
} else {
  await import("./express_token.mjs");
}
