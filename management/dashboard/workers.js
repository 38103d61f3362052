// `minibroker start --workers N`: one node made of N processes. The API shows it as one node
// whose `workers` lists each process, and marks each connection, session and subscription row
// with the `worker` holding it; these helpers turn that into the dashboard's per-worker rows.
// Plain data in, plain data out (no DOM), so that they run in node as well as in the page.

// One row per worker of every node that has workers: what the overview's Workers table shows.
export function workerRows(nodes) {
  return nodes.flatMap((n) => (n.workers || []).map((w) => ({
    node: n.node,
    worker: w.worker,
    pid: w.pid ?? '',
    node_status: w.node_status,
    connections: w.connections,
    memory_used: w.memory_used,
    __key: `${n.node}/${w.worker}`,
  })));
}

// The list's columns, with a `worker` column after `node` when any row says which worker
// holds it (a node of one worker adds nothing).
export function workerColumns(columns, rows) {
  if (!rows.some((row) => row.worker !== undefined && row.worker !== null)) return columns;
  const at = columns.findIndex(([, key]) => key === 'node');
  const column = ['worker', 'worker'];
  return at < 0 ? [...columns, column]
    : [...columns.slice(0, at + 1), column, ...columns.slice(at + 1)];
}
