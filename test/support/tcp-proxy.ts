import net from "node:net";

/**
 * A TCP proxy in front of a server (PostgreSQL here), for outage tests
 * without restarting the shared server: `down()` cuts every connection
 * through it and resets new ones, as a database restart or failover looks to
 * a client; `up()` lets connections through again.
 */
export class TcpProxy {
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;
  private isDown = false;
  port = 0;

  private constructor(targetHost: string, targetPort: number) {
    this.server = net.createServer((client) => {
      if (this.isDown) {
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(targetPort, targetHost);
      const pair = [client, upstream];
      for (const s of pair) {
        this.sockets.add(s);
        // Either side ending ends both: a half-open pair is no outage a client sees.
        s.on("error", () => undefined);
        s.on("close", () => {
          this.sockets.delete(s);
          for (const o of pair) o.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  static async start(targetHost: string, targetPort: number): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetHost, targetPort);
    await new Promise<void>((resolve, reject) => {
      proxy.server.once("error", reject);
      proxy.server.listen(0, "127.0.0.1", resolve);
    });
    proxy.port = (proxy.server.address() as net.AddressInfo).port;
    return proxy;
  }

  /** Cuts every connection (RST) and resets new ones until up(). */
  down(): void {
    this.isDown = true;
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
  }

  up(): void {
    this.isDown = false;
  }

  /** `url` with its host and port replaced by this proxy's. */
  urlFor(url: string): string {
    const u = new URL(url);
    u.hostname = "127.0.0.1";
    u.port = String(this.port);
    return u.toString();
  }

  async close(): Promise<void> {
    this.down();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
