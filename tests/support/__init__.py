"""Helpers shared by several test modules; not tests themselves (pytest collects none here).

    tests.support.export_models  tiny export config and model, label map, noise images
    tests.support.training       tiny training config overrides and the first fixed batch
    tests.support.train_worker   subprocess entry points for tests/training/test_loop.py
    tests.support.ports          free loopback ports for multi-worker tests
    tests.support.own_formats    tiny Pascal VOC and YOLO folders
    tests.support.cli            `python main.py ARGS` run inside the test process
"""
