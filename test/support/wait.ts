/**
 * Polls until `check` returns true, or fails with `what` after `timeoutMs`.
 * `explain`, when given, describes the state at the timeout, so a failure in
 * CI says what was stuck instead of only that something was.
 */
export async function waitFor(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 20_000,
  everyMs = 50,
  explain?: () => Promise<string> | string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) {
      const state = explain === undefined ? "" : `; state: ${await explain()}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
