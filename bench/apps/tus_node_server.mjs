// Peer: the Node reference tus server (@tus/server with @tus/file-store), as its README's
// standalone example, plus a trivial GET /healthz on the same event loop for the latency probe.
// Copied into the benchmark's cache directory (next to node_modules) and run there:
//     node tus_node_server.mjs PORT DATA_DIR
import http from "node:http";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [port, directory] = process.argv.slice(2);
const tus = new Server({ path: "/files", datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  tus.handle(req, res);
});
server.listen(Number(port), "127.0.0.1");
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
});
