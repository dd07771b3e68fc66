"""The router daemon: wiring, the API's handler table, metrics, start-up.  Imports any
package; nothing imports it.
"""
