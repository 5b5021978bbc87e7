# Tests that run srsd behind a real Postfix 3.x: postmap as client and a throw-away instance.
