/**
 * Traffic for the demo, run inside a namespace:
 *   serve PORT BYTES   HTTP server (IPv4 and IPv6) with BYTES of random data at /download
 *   fetch URL          download, print "<bytes> <ms> <sha256>"
 *   text URL           print the body (the server's /sha is the sha256 of /download)
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';

const [cmd, a1, a2] = process.argv.slice(2);
if (cmd === 'serve') {
  const data = randomBytes(Number(a2));
  const sum = createHash('sha256').update(data).digest('hex');
  const server = http.createServer((req, res) => {
    const body = req.url === '/sha' ? Buffer.from(sum) : data;
    res.writeHead(200, { 'content-length': body.length });
    res.end(body);
  });
  server.on('listening', () => console.log('ready'));
  // IPv4 and IPv6 on one socket; IPv4 alone on a host without IPv6.
  server.once('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EAFNOSUPPORT' && e.code !== 'EADDRNOTAVAIL') throw e;
    server.listen(Number(a1), '0.0.0.0');
  });
  server.listen(Number(a1), '::');
} else if (cmd === 'fetch') {
  const started = process.hrtime.bigint();
  http
    .get(a1 ?? '', { timeout: 60_000 }, (res) => {
      const h = createHash('sha256');
      let n = 0;
      res.on('data', (d: Buffer) => {
        h.update(d);
        n += d.length;
      });
      res.on('end', () => {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        console.log(`${n} ${ms.toFixed(1)} ${h.digest('hex')}`);
      });
    })
    .on('error', (e) => {
      console.error(e.message);
      process.exit(1);
    });
} else if (cmd === 'text') {
  http
    .get(a1 ?? '', { timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => console.log(body));
    })
    .on('error', (e) => {
      console.error(e.message);
      process.exit(1);
    });
} else {
  console.error('usage: demo-traffic serve PORT BYTES | fetch URL');
  process.exit(2);
}
