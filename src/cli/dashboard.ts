/**
 * `cladnet dashboard --listen 127.0.0.1:8080 --etcd URL[,URL] --network NAME`: the live topology
 * page (src/dashboard/). A separate process with read-only etcd rights; agents keep no web server.
 * Runs until SIGINT or SIGTERM.
 */
import { createEtcd, etcdOptionsFrom, type EtcdSettings } from '../control/etcd';
import { EtcdLink } from '../control/etcd-link';
import { checkName } from '../control/keys';
import { getNetwork } from '../control/networks';
import { parseHttpListen, startDashboard } from '../dashboard/server';
import { createRootLogger } from '../log';

export interface DashboardFlags extends Omit<EtcdSettings, 'etcd'> {
  etcd: string;
  listen: string;
  network: string;
  logLevel: string;
}

export async function dashboardCommand(o: DashboardFlags): Promise<void> {
  const network = checkName(o.network, 'network');
  parseHttpListen(o.listen); // (before anything connects: a typo is named at once)
  const log = createRootLogger(o.logLevel);
  const link = new EtcdLink({ log });
  const etcd = o.etcd.split(',').map((s) => s.trim()).filter(Boolean);
  const client = createEtcd({ ...etcdOptionsFrom({ ...o, etcd }), link });
  let dash;
  try {
    const spec = await getNetwork(client, network);
    dash = await startDashboard({ client, network: spec, listen: o.listen, log, link });
  } catch (e) {
    client.close();
    throw e;
  }
  process.stderr.write(`cladnet: dashboard of network ${network} on http://${dash.address}/\n`);
  const d = dash;
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop).off('SIGTERM', stop);
      void d
        .close()
        .catch(() => undefined)
        .then(() => {
          link.close();
          client.close();
          resolve();
        });
    };
    process.on('SIGINT', stop).on('SIGTERM', stop);
  });
}
