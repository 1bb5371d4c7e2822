"""The remote engine, by job: ``engine.py`` (the OcrEngine), ``servers.py`` (the servers, their health and guard,
which gets a page), ``client.py`` (vLLM's HTTP endpoints), ``loop_thread.py`` (the event loop the calls run on)."""
