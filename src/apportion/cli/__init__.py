"""The ``apportion`` command: one module per noun it acts on. Talks to the
server through ``apportion.client``; imports what a command needs when it
runs, so that ``apportion submit`` starts fast. Never imports ``service``,
``store`` or ``server`` except ``server``/``up``, which run one."""
