/** A failure the CLI reports in one line and exits 2 for: the configuration or the environment is wrong. */
export class StartupError extends Error {
  readonly code = "STARTUP";
  constructor(message: string) {
    super(message);
    this.name = "StartupError";
  }
}
