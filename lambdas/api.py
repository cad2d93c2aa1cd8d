"""API function: a Function URL with AWS_IAM auth, payload format 2.0 (see template.yaml)."""

from qo.serverless.api import handler  # noqa: F401
