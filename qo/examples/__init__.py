"""Small example apps, used by the README demo and the tests."""
