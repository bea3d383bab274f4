"""``warmstart services``: a private Redis and S3 for trying warmstart by hand.

Starts the embedded redis-server and moto's S3 server on free loopback ports, creates the
bucket, prints the ``WARMSTART_*`` exports for the other terminals (worker, beat, clients) and
runs until interrupted. Nothing is persisted: stopping it forgets every model and queue.
"""

from __future__ import annotations

import shlex
import signal
import threading

import click


def service_exports(redis_url: str, s3_url: str, bucket: str, prefix: str) -> dict[str, str]:
    """The environment that points warmstart (and boto3) at the embedded services."""
    from warmstart.infra.services import EmbeddedS3

    return {
        "WARMSTART_REDIS_URL": redis_url,
        "WARMSTART_STORE_URL": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
        "WARMSTART_S3_ENDPOINT_URL": s3_url,
        **EmbeddedS3.credentials_env(),
    }


@click.command()
@click.option("--bucket", default="warmstart", show_default=True, help="Bucket to create in the embedded S3.")
@click.option("--prefix", default="models", show_default=True, help="Key prefix of the snapshots in the bucket.")
@click.option("--publish-examples", is_flag=True, help="Publish the example models once the services are up.")
def services(bucket: str, prefix: str, publish_examples: bool) -> None:
    """Run a private redis-server and S3 (moto) until Ctrl-C; print the exports to use them."""
    from warmstart.infra.services import EmbeddedRedis, EmbeddedS3, apply_test_credentials
    from warmstart.snapshot.names import validate_name
    from warmstart.snapshot.stores.s3 import S3Store

    validate_name(bucket, "bucket")
    apply_test_credentials()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedRedis() as redis_server, EmbeddedS3() as s3_server:
        store = S3Store(bucket, prefix, endpoint_url=s3_server.url)
        store.ensure_bucket()
        if publish_examples:
            from warmstart.snapshot.publish import publish_examples as publish

            publish(store, show_progress=True)
        click.echo("# warmstart services are up. In each other terminal:")
        for name, value in service_exports(redis_server.url, s3_server.url, bucket, prefix).items():
            click.echo(f"export {name}={shlex.quote(value)}")
        click.echo("# then: warmstart worker / warmstart beat / warmstart infer … (Ctrl-C here stops both)", err=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    click.echo("stopped redis-server and S3", err=True)


services_commands = [services]
